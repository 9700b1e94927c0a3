"""The Attention page's overview pass (``kvviz.attention.maps.overview``) alone, at Llama-3.2-1B's
attention shape, on the CPU or a GPU.

    python benchmarks/overview_bench.py [--tokens 4096] [--layers 2] [--device cpu] [--repeats 3]
        [--pool max] [--out overview.json]

The model is a random-weight Llama built in this process (``kvviz.model.random_model``) with
1B's attention (32 query heads over 8 KV heads of 64, hidden 2048) and a small MLP and vocabulary,
so that the forward pass costs little beside the overview's own attention arithmetic: THE TOKENS
MEAN NOTHING. Reports the median time of ``repeats`` calls after a warm-up, the time of the
forward pass alone, so that the overview's own share can be read, and on a GPU the overview's
extra peak memory. ``--layers 16 --tokens 32768`` is the attention of
``long_context.py``'s model (its overview took 9.0 s on an H200 before ``_layer_overview``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # kvviz without installing it

import torch  # noqa: E402

from kvviz.attention import maps as attention_maps  # noqa: E402
from kvviz.model.random_model import random_llama  # noqa: E402


def config(tokens: int, layers: int):
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=1024, hidden_size=2048, intermediate_size=256, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=tokens + 8,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pool", default="max", choices=list(attention_maps.POOLS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = random_llama(config(args.tokens, args.layers), device_map={"": args.device}, dtype=getattr(torch, args.dtype))
    ids = torch.randint(0, 1024, (args.tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    attention_maps.overview(model, ids[:256], pool=args.pool)  # warm-up
    run = lambda: attention_maps.overview(model, ids, pool=args.pool)  # noqa: E731
    forward = lambda: model(torch.tensor([ids], device=args.device))  # noqa: E731
    with torch.inference_mode():
        forward_s = [timed(forward, args.device) for _ in range(args.repeats)]
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    overview_s = [timed(run, args.device) for _ in range(args.repeats)]
    import transformers

    row = {
        "tokens": args.tokens, "layers": args.layers, "device": args.device, "dtype": args.dtype, "pool": args.pool,
        "overview_s": [round(s, 3) for s in overview_s], "overview_median_s": round(statistics.median(overview_s), 3),
        "forward_median_s": round(statistics.median(forward_s), 3),
        "extra_peak_bytes": int(torch.cuda.max_memory_allocated() - base) if cuda else None,
        "card": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
