"""The README's perplexities of the known results are the committed results files' (issue 24:
'full cache 22.1' stood beside a file that says 22.19)."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def perplexities(name: str) -> list[str]:
    rows = json.loads((ROOT / "benchmarks" / "results" / name).read_text())["perplexity"]
    by_policy = {r["policy"]: r["perplexity"] for r in rows}
    return [f"{by_policy[p]:.1f}" for p in ("full", "window", "streaming_llm")]


def test_known_result_perplexities_in_the_readme():
    text = " ".join((ROOT / "README.md").read_text().split())
    h100 = re.search(r"full cache (\d+\.\d), plain window (\d+\.\d) \(\S+\), StreamingLLM \(4 sinks \+ window\) (\d+\.\d)", text)
    assert h100 and list(h100.groups()) == perplexities("known_results_h100.json")
    h200 = re.search(r"known_results_h200\.json`\): perplexities (\d+\.\d), (\d+\.\d) and (\d+\.\d)", text)
    assert h200 and list(h200.groups()) == perplexities("known_results_h200.json")
