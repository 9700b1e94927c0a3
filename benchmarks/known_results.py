"""Known results of the literature, checked on our model through the sweep (kvviz/sweep/run.py).

1. Attention sinks (StreamingLLM): teacher-forced perplexity of the built-in long document under
   the full cache, a plain window, and sinks + window of the same size.
2. Passkey retrieval under SnapKV: does the needle survive, by observation window and pooling,
   at a few depths; full cache and plain window as references.

    python benchmarks/known_results.py [--device cuda] [--out results.json]

The same numbers from the CLI (the defaults below):

    python -m kvviz sweep --policy full --policy window --policy streaming_llm:n_sink=4 \\
        --budgets 256 --example long --context 1024 --continuation 1024
    python -m kvviz sweep --task passkey --policy full --policy window \\
        --policy snapkv:window=8 --policy snapkv:window=8,pooling=max --policy snapkv:window=8,kernel=1 ... \\
        --ratios 0.1 --lengths 1800 --depths 0.1,0.5,0.9
"""

from __future__ import annotations

import sys
from pathlib import Path
import argparse
import json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kvviz, installed or not

from kvviz.sweep import run as sweep
from kvviz.record.examples import long_document
from kvviz.model.loading import load_model

SINK_POLICIES = ("window", "streaming_llm:n_sink=4")  # the full cache is the sweep's reference
SNAPKV_POLICIES = ("full", "window") + tuple(
    f"snapkv:window={window},pooling={pooling},kernel={kernel}"
    for window in (8, 32, 64)
    for pooling, kernel in (("avg", 7), ("max", 7), ("avg", 1))
)


def perplexities(loaded, prompt_tokens: int, continuation: int, budget: int) -> list[dict]:
    settings = sweep.SweepSettings(
        policies=SINK_POLICIES, budgets=(budget,), text=long_document(), context=prompt_tokens, continuation=continuation,
    )
    result = sweep.run(loaded.model, loaded.tokenizer, settings, model_name=loaded.summary.name)
    ref = result.reference
    full = {"policy": "full", "series": "full", "params": "", "budget": None, "perplexity": ref["ppl"], "kl_full": 0.0,
            "top1_agree": 1.0, "kv_bytes_full": ref["kv_bytes_full"], "seconds": ref["seconds"]}
    return [full] + [row.to_dict() | {"perplexity": row.ppl} for row in result.rows]


def passkey_grid(loaded, filler: int, depths, ratio: float) -> list[dict]:
    settings = sweep.SweepSettings(policies=SNAPKV_POLICIES, ratios=(ratio,), task="passkey", depths=tuple(depths), lengths=(filler,))
    result = sweep.run(loaded.model, loaded.tokenizer, settings, model_name=loaded.summary.name)
    return [row.to_dict() for row in result.rows]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device")
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--continuation", type=int, default=1024)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--filler", type=int, default=1800)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--out")
    args = ap.parse_args()
    loaded = load_model(device=args.device)
    result = {
        "device": loaded.summary.device,
        "dtype": loaded.summary.dtype,
        "perplexity": perplexities(loaded, args.prompt_tokens, args.continuation, args.budget),
        "passkey": passkey_grid(loaded, args.filler, (0.1, 0.5, 0.9), args.ratio),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    print(f"\nPerplexity of {args.continuation} forced tokens after a {args.prompt_tokens}-token prompt, budget {args.budget} ({result['device']}, {result['dtype']})")
    for r in result["perplexity"]:
        print(f"  {r['series']:24s} {r['perplexity']:8.2f}   KL {r['kl_full']:.3f}  top-1 {r['top1_agree']:.0%}  ({r['seconds']:.1f} s)")
    print(f"\nPasskey (filler {args.filler} tokens), ratio {args.ratio}: found at depths")
    table: dict[str, list[str]] = {}
    for r in result["passkey"]:
        table.setdefault(r["series"], []).append(f"{r['depth']:.1f}:{'yes' if r['found'] else 'no '}")
    for name, cells in table.items():
        print(f"  {name:40s} {'  '.join(cells)}")


if __name__ == "__main__":
    main()
