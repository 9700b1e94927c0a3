"""``python -m kvviz bench``: kvviz's policies next to transformers ``generate``, timed the same way."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kvviz.commands.run import add_model_args, load

HELP = "time decoding under each policy beside transformers generate (median step, whole call)"


def configure(p) -> None:
    p.add_argument("--prompt-tokens", type=int, default=2048, help="prompt length (the longest built-in example, repeated)")
    p.add_argument("--new-tokens", type=int, default=128, help="greedy tokens decoded (EOS ignored)")
    p.add_argument("--policies", help="comma-separated policies or compositions (text forms allowed); default: every registered policy")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--budget", type=int, help="kept entries per layer and KV head, for policies that take one")
    size.add_argument("--ratio", type=float, default=0.25, help="kept fraction of the prompt (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (after a warm-up); the median is shown")
    p.add_argument("--no-graphs", action="store_true", help="decode eagerly (no CUDA graph replay)")
    p.add_argument("--live", action="store_true", help="also time the Live page's whole run (policy, full and teacher-forced runs)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the result (card, versions, commit, rows) as JSON")
    add_model_args(p)


def specs(args) -> list:
    """The PolicySpecs to time: each named policy, with --budget or --ratio where it takes a budget."""
    from kvviz import policies
    from kvviz.policies.spec import PolicySpec

    names = [n.strip() for n in args.policies.split(",") if n.strip()] if args.policies else sorted(policies.registry())
    out = [PolicySpec.of(name) for name in names]
    return [s.with_budget(args.budget) if args.budget is not None and s.takes_budget else
            s.with_budget(ratio=args.ratio) if s.takes_budget else s for s in out]


def main(args) -> int:
    import sys

    from kvviz.runtime.bench import run_bench, table

    for flag in ("prompt_tokens", "new_tokens", "repeats"):
        if getattr(args, flag) < (2 if flag == "new_tokens" else 1):
            raise ValueError(f"--{flag.replace('_', '-')} is too small.")
    wanted = specs(args)
    loaded = load(args)
    result = run_bench(loaded, wanted, args.prompt_tokens, args.new_tokens, args.repeats, graphs=not args.no_graphs,
                       live=args.live, progress=lambda line: print(line, file=sys.stderr, flush=True))
    result.date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result.command = "python -m kvviz " + " ".join(sys.argv[1:])
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    return 0
