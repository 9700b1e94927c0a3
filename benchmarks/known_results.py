"""Known results of the literature, checked on our model.

1. Attention sinks (StreamingLLM): teacher-forced perplexity of the built-in long document under
   the full cache, a plain window, and sinks + window of the same size.
2. Passkey retrieval under SnapKV: does the needle survive, by observation window and pooling,
   at a few depths; full cache and plain window as references.

    python benchmarks/known_results.py [--device cuda] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time

from kvviz import engine
from kvviz.data import long_document, passkey_prompt
from kvviz.models import load_model
from kvviz.text import encode_prompt


def perplexities(loaded, prompt_tokens: int, continuation: int, budget: int) -> list[dict]:
    ids = loaded.tokenizer(long_document()).input_ids
    prompt, forced = ids[:prompt_tokens], ids[prompt_tokens : prompt_tokens + continuation]
    rows = []
    for policy, params in [("full", {}), ("window", {}), ("streaming_llm", {"n_sink": 4})]:
        t = time.perf_counter()
        trace = engine.run(
            loaded.model, loaded.tokenizer, prompt, policy, params,
            budget=None if policy == "full" else budget, forced_ids=forced,
        )
        rows.append({
            "policy": policy, "params": params, "budget": trace.budget,
            "perplexity": engine.perplexity(trace), "seconds": time.perf_counter() - t,
        })
    return rows


def passkey_grid(loaded, filler: int, depths, ratio: float) -> list[dict]:
    rows = []
    configs = [("full", {}), ("window", {})]
    for window in (8, 32, 64):
        for pooling, kernel in (("avg", 7), ("max", 7), ("avg", 1)):
            configs.append(("snapkv", {"window": window, "pooling": pooling, "kernel": kernel}))
    for depth in depths:
        text, key = passkey_prompt(filler, depth)
        ids = encode_prompt(loaded.tokenizer, text, chat=True)
        for policy, params in configs:
            trace = engine.run(
                loaded.model, loaded.tokenizer, ids, policy, params,
                ratio=None if policy == "full" else ratio, max_new_tokens=12,
            )
            rows.append({
                "depth": depth, "prompt_tokens": len(ids), "policy": policy, "params": params,
                "found": key in trace.generated_text, "answer": trace.generated_text.strip(),
            })
    return rows


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
        print(f"  {r['policy']:14s} {r['perplexity']:8.2f}   ({r['seconds']:.1f} s)")
    print(f"\nPasskey (filler {args.filler} tokens), ratio {args.ratio}: found at depths")
    table: dict[str, list[str]] = {}
    for r in result["passkey"]:
        name = r["policy"] + (" " + ",".join(f"{k}={v}" for k, v in r["params"].items()) if r["params"] else "")
        table.setdefault(name, []).append(f"{r['depth']:.1f}:{'yes' if r['found'] else 'no '}")
    for name, cells in table.items():
        print(f"  {name:40s} {'  '.join(cells)}")


if __name__ == "__main__":
    main()
