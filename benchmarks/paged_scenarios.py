"""The Paged cache page's one-click scenarios, run as the page runs them, and the memory each
wastes under every reservation scheme (the README's waste numbers come from this file).

    python benchmarks/paged_scenarios.py --json benchmarks/results/paged_scenarios_cpu.json
    python benchmarks/paged_scenarios.py --scenarios prefix,mixed --device cpu

Writes, per scenario, ``kvviz.paged.waste.waste()`` of the finished requests (the waste table of
the page and of ``python -m kvviz paged``), with the date, the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvviz.model.loading import load_model  # noqa: E402
from kvviz.paged.run import PagedSettings, run_paged  # noqa: E402
from kvviz.paged.scenarios import BY_KEY  # noqa: E402
from kvviz.policies.spec import PolicySpec  # noqa: E402


def run_scenario(loaded, key: str) -> dict:
    sc = BY_KEY[key]
    settings = PagedSettings(
        block_size=sc.block_size, num_blocks=sc.num_blocks, n=sc.n, max_new_tokens=sc.max_new_tokens, sample=sc.sample,
        seed=sc.seed, chat=sc.chat, policy=PolicySpec.parse(sc.policy) if sc.policy else None, eviction=sc.eviction,
    )
    t0 = time.perf_counter()
    run = run_paged(loaded.model, loaded.tokenizer, list(sc.prompts), settings, model_name=loaded.summary.name)
    return {"scenario": key, "title": sc.title, "seconds": round(time.perf_counter() - t0, 2),
            "prompt_tokens": [len(r["prompt_token_ids"]) for r in run.requests],
            "generated_tokens": [len(r["generated_token_ids"]) for r in run.requests], "waste": run.waste}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="prefix,mixed", help=f"comma-separated, of {', '.join(BY_KEY)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--json", type=Path, default=None, help="write the results here as well")
    args = p.parse_args()
    loaded = load_model(None, device=args.device, dtype=args.dtype)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "command": "python benchmarks/paged_scenarios.py " + " ".join(sys.argv[1:]),
        "model": loaded.summary.name, "device": loaded.summary.device, "dtype": loaded.summary.dtype,
        "scenarios": [run_scenario(loaded, key) for key in args.scenarios.split(",")],
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
