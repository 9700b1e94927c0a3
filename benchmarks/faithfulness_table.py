"""The README's table "Faithfulness to the authors' code", rendered from what the tests measured.

tests/integration/test_authors_code.py runs each policy against a rule re-implemented from its
authors' released code; run with KVVIZ_WRITE_RESULTS=1, each test records what it measured
(released code, what matches, the measured share, what differs on purpose) into
benchmarks/results/faithfulness.json. This script renders that file as the README's section, so
the text cannot drift from the measurements (tests/unit/test_faithfulness_table.py checks it):

    KVVIZ_WRITE_RESULTS=1 python -m pytest -p no:cacheprovider tests/integration/test_authors_code.py
    python benchmarks/faithfulness_table.py            # print the section
    python benchmarks/faithfulness_table.py --write    # put it into README.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "faithfulness.json"
README = ROOT / "README.md"
HEADING = "### Faithfulness to the authors' code"


def load(path: Path = RESULTS) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"meta": {}, "rows": {}}


def record(policy: str, part: str, text: str, measured: dict, *, rows: dict, meta: dict, path: Path = RESULTS) -> None:
    """Merge one test's measurement into the results file. ``rows``: policy -> {"released",
    "differs", "parts"} (the order of the table's rows and of each row's parts); ``text``: this
    part of the "Measured agreement" cell; ``measured``: the raw numbers behind it."""
    data = load(path)
    old = data.get("rows", {})
    parts = {p["part"]: p for p in old.get(policy, {}).get("agreement", [])}
    parts[part] = {"part": part, "text": text, "measured": measured}
    new = {}
    for name, row in rows.items():  # the table's order; the static texts as the tests have them now
        kept = parts if name == policy else {p["part"]: p for p in old.get(name, {}).get("agreement", [])}
        if name != policy and name not in old:
            continue
        new[name] = {
            "released": row["released"],
            "agreement": [kept[p] for p in row["parts"] if p in kept],
            "differs": row["differs"],
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": new}, indent=1, ensure_ascii=False) + "\n")


def render(data: dict) -> str:
    """The section's text (below its heading): a sentence and the table."""
    meta = data["meta"]
    lines = [
        f"`tests/integration/test_authors_code.py` runs each policy on {meta.get('model', 'SmolLM2')}, with a",
        f"{meta.get('prompt_tokens', '?')}-token prompt, against a rule re-implemented from the authors' released code",
        "(`tests/released.py`, which cites the lines). Run with `KVVIZ_WRITE_RESULTS=1`, the",
        "tests write what they measured to `benchmarks/results/faithfulness.json`, and",
        "`benchmarks/faithfulness_table.py --write` renders this table from it.",
        "",
        "| Policy | Released code (repository, commit, file) | Measured agreement | Differs on purpose |",
        "|---|---|---|---|",
    ]
    for policy, row in data["rows"].items():
        agreement = "; ".join(p["text"] for p in row["agreement"])
        lines.append(f"| `{policy}` | {row['released']} | {agreement} | {row['differs']} |")
    return "\n".join(lines)


def readme_section(readme: str) -> tuple[int, int]:
    """(first, end) line indexes of the section's body: after the heading, up to the next heading."""
    lines = readme.split("\n")
    first = lines.index(HEADING) + 1
    end = next(i for i in range(first, len(lines)) if lines[i].startswith("#"))
    return first, end


def section_text(readme: str) -> str:
    first, end = readme_section(readme)
    return "\n".join(readme.split("\n")[first:end]).strip()


def with_section(readme: str, body: str) -> str:
    first, end = readme_section(readme)
    lines = readme.split("\n")
    return "\n".join(lines[:first] + ["", body, ""] + lines[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the measurements (JSON)")
    parser.add_argument("--write", action="store_true", help="replace the section in README.md")
    args = parser.parse_args(argv)
    body = render(load(args.results))
    if args.write:
        README.write_text(with_section(README.read_text(), body))
    else:
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
