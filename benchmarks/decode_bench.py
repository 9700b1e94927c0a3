"""Time per decode step under cache policies, next to transformers' generate with a full cache.

    python benchmarks/decode_bench.py [--prompt-tokens 2048] [--new-tokens 128] [--out results.json]

A prompt of N tokens from the built-in long document (repeated if needed), N new tokens greedy
without stopping at EOS. Each configuration runs once to warm up, then ``--repeats`` times; the
table shows the median time per decode step. On CUDA the GPU's name is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from kvviz import engine
from kvviz.models import load_model

POLICIES = [
    ("full", {}, None),
    ("h2o", {}, 512),
    ("snapkv", {}, 512),
    ("streaming_llm", {}, 512),
    ("kivi", {}, None),
]


def long_prompt(tokenizer, n_tokens: int) -> list[int]:
    try:
        from kvviz.data import EXAMPLES

        text = max(EXAMPLES.values(), key=len)
    except ImportError:
        text = "The keeper climbed the stairs of the lighthouse and lit the lamp at dusk. " * 40
    ids = tokenizer(text).input_ids
    while len(ids) < n_tokens:
        ids = ids + ids
    return ids[:n_tokens]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generate(model, ids, new_tokens, device) -> float:
    """Median-free single timing of generate's decode: (t(new_tokens) - t(1)) / (new_tokens - 1)."""
    x = torch.tensor([ids], device=device)

    def gen(n):
        sync(device)
        t = time.perf_counter()
        model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        sync(device)
        return time.perf_counter() - t

    return (gen(new_tokens) - gen(1)) / (new_tokens - 1)


def time_policy(model, tok, ids, name, params, budget, graphs, new_tokens, repeats, device) -> dict:
    kw = dict(budget=budget, max_new_tokens=new_tokens, stop_at_eos=False, cuda_graphs=graphs)
    warm_budget = min(budget, 128) if budget else None
    engine.run(model, tok, ids[:256], name, params=params, **{**kw, "budget": warm_budget, "max_new_tokens": 8})
    steps, prefill, trace = [], [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trace = engine.run(model, tok, ids, name, params=params, **kw)
        steps.append(statistics.median(trace.timings["step_s"][:-1]))
        prefill.append(trace.timings["prefill_s"])
    row = {
        "config": f"kvviz {name}" + (f" budget {budget}" if budget else "") + (" CUDA graph" if graphs else ""),
        "step_ms": 1e3 * statistics.median(steps),
        "prefill_ms": 1e3 * statistics.median(prefill),
        "kv_MiB": trace.kv_bytes[-1] / 2**20,
        "kv_full_MiB": trace.kv_bytes_full[-1] / 2**20,
    }
    if device.type == "cuda":
        row["peak_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-tokens", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device")
    ap.add_argument("--policies", default=",".join(p for p, _, _ in POLICIES))
    ap.add_argument("--out")
    args = ap.parse_args()

    loaded = load_model(device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    ids = long_prompt(tok, args.prompt_tokens)
    rows = []

    generate_steps = []
    time_generate(model, ids[:64], 4, device)  # warm-up
    for _ in range(args.repeats):
        generate_steps.append(time_generate(model, ids, args.new_tokens, device))
    rows.append({"config": "transformers generate (full)", "step_ms": 1e3 * statistics.median(generate_steps)})

    wanted = set(args.policies.split(","))
    from kvviz.policies import registry

    for name, params, budget in POLICIES:
        if name not in wanted or name not in registry():
            continue
        graph_safe = getattr(registry()[name], "graph_safe", False) and device.type == "cuda"
        for graphs in [False, True] if graph_safe else [False]:
            rows.append(time_policy(model, tok, ids, name, params, budget, graphs, args.new_tokens, args.repeats, device))

    result = {
        "device": card,
        "dtype": str(model.dtype),
        "torch": torch.__version__,
        "prompt_tokens": len(ids),
        "new_tokens": args.new_tokens,
        "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    print(f"\n{card}, {model.dtype}, prompt {len(ids)} tokens, {args.new_tokens} new tokens, median of {args.repeats}")
    print(f"{'configuration':44s} {'ms/step':>9s} {'prefill ms':>11s} {'KV MiB':>8s} {'full MiB':>9s}")
    for r in rows:
        print(
            f"{r['config']:44s} {r['step_ms']:9.2f} {r.get('prefill_ms', float('nan')):11.1f} "
            f"{r.get('kv_MiB', float('nan')):8.2f} {r.get('kv_full_MiB', float('nan')):9.2f}"
        )


if __name__ == "__main__":
    main()
