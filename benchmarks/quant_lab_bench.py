"""The memory calculator and the quantization lab on a long prompt, in one process (for a GPU host).

    python benchmarks/quant_lab_bench.py --device cuda --tokens 2048 --out "$OUT/quant_lab.json"

1. calculator   the calculator's bytes for the loaded model against ``kv_bytes`` of a real
                full-cache run at every step (in the model's dtype: bf16 on a GPU)
2. grid         per-token against per-channel quantization of several layers' real K/V at 8/4/2
                bits and group sizes 32/64(/128): K and V error, attention KL, output error, bytes
3. next token   the whole model with each store (quant per token / per channel, KIVI-4/2 with
                R = 128), teacher-forced on the full cache's greedy tokens: mean and max KL, top-1
Prints a table per part and writes everything as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attention_bench import prompt_ids  # noqa: E402

from kvviz.quant_lab import run as lab  # noqa: E402
from kvviz.calculator.check import check_calculator  # noqa: E402
from kvviz.model.loading import load_model  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--layers", default="0,10,20,29")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    lab.MAX_TOKENS = max(lab.MAX_TOKENS, args.tokens)

    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    ids = prompt_ids(tok, args.tokens)
    result = {
        "model": loaded.summary.name, "device": str(device), "dtype": loaded.summary.dtype, "tokens": len(ids),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
    }

    # 1. calculator against the real cache
    t0 = time.perf_counter()
    check = check_calculator(model, tok, ids, new_tokens=4, max_prompt=len(ids), name=loaded.summary.name)
    result["calculator"] = {"agree": check.agree, "dtype": check.dtype, "rows": check.rows, "seconds": time.perf_counter() - t0}
    print(f"\n1. calculator vs real cache ({check.dtype}, {len(ids)} prompt tokens): {'agree' if check.agree else 'DISAGREE'}")
    for r in check.rows:
        print(f"   step {r['step']}: {r['tokens held']:>6} tokens  measured {r['measured bytes']:>13,}  calculated {r['calculated bytes']:>13,}")

    # 2. the error grid, layer by layer
    result["grid"] = []
    print(f"\n2. per token vs per channel on the first {len(ids)} tokens (K err / V err / attention KL / bytes)")
    for layer in [int(x) for x in args.layers.split(",")]:
        t0 = time.perf_counter()
        lc = lab.read_layer(model, ids, layer)
        m, results = lab.error_grid(lc, bits=(8, 4, 2), token_groups=(32, 64), channel_groups=(32, 64, 128))
        sync(device)
        seconds = time.perf_counter() - t0
        outliers = lab.channel_stats(lc, 0)["key_outliers"].tolist()
        rows = [r.row() for r in results]
        result["grid"].append({"layer": layer, "tokens": m, "key_outliers_head0": outliers, "rows": rows, "seconds": seconds})
        print(f"   layer {layer} ({m} tokens, {seconds:.1f} s; outlier key channels of head 0: {outliers})")
        for r in rows:
            print(f"     {r['scheme']:<22} {r['bits']}-bit  K {r['key error']:7.2%}  V {r['value error']:7.2%}  "
                  f"KL {r['attention KL']:.2e}  out {r['output error']:7.2%}  {r['bytes']:>11,} B ({r['of full']:.1%})")
        by = {(r.scheme.axis, r.scheme.bits, r.scheme.group): r for r in results}
        wins = sum(by[("per_channel", b, g)].key_error < by[("per_token", b, g)].key_error for b in (8, 4, 2) for g in (32, 64))
        print(f"     per-channel keys beat per-token keys in {wins} of 6 (bits, group) pairs")
        del lc
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # 3. the next token with each store
    t0 = time.perf_counter()
    nxt = lab.next_token_kl(model, tok, ids, lab.next_token_schemes(residual=128), new_tokens=args.new_tokens)
    sync(device)
    result["next_token"] = {"new_tokens": args.new_tokens, "rows": [r.row() for r in nxt], "seconds": time.perf_counter() - t0}
    print(f"\n3. next-token KL against the full cache ({args.new_tokens} teacher-forced tokens, {time.perf_counter() - t0:.1f} s)")
    for r in result["next_token"]["rows"]:
        print(f"   {r['scheme']:<22} {r['bits']}-bit  mean KL {r['mean KL']:.4f}  max {r['max KL']:.4f}  "
              f"top-1 {r['top-1 agreement']:.0%}  {r['cache bytes']:>12,} B ({r['of full']:.1%})")

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=float))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
