"""A decode step from the paged pool against the contiguous cache, in the same process.

    python benchmarks/paged_bench.py [--device cuda] [--batch 1,8] [--prompt-tokens 512,2048]
                                     [--steps 32] [--block-size 16] [--out results.json]

For each batch size B and prompt length P: B requests of P tokens (slices of the built-in long
document, so no two share a prefix block), greedy, without stopping at EOS.

* contiguous: transformers' DynamicCache, the B requests as one batch (equal lengths, no padding):
  one model forward per step.
* paged forward: the same decode step as ``kvviz.paged.paged_cache.forward`` runs it: new K/V written
  into each request's slots, every request's K/V gathered through its block table, one 4D mask.
* paged step: a whole scheduler step: slots from the block manager, the forward, the next tokens
  (no frames recorded, as the page would).

Each is timed over ``--steps`` decode steps after a warm-up; the table shows the median ms per
step and the ratio to the contiguous cache (aim: at most 1.5x). Also reported: whether the greedy
tokens agree (float32: they must; bf16 may differ by rounding in the batched attention).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kvviz, not an installed one

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import DynamicCache  # noqa: E402

import kvviz.paged.runner as runner_module  # noqa: E402
from kvviz.record import examples as data  # noqa: E402
from kvviz.runtime import engine
from kvviz.model.loading import load_model  # noqa: E402
from kvviz.paged.engine import PagedEngine  # noqa: E402
from kvviz.paged.scheduler import Request  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prompts(tokenizer, batch: int, n_tokens: int) -> list[list[int]]:
    ids = tokenizer(data.long_document()).input_ids
    while len(ids) < (batch + 1) * n_tokens:
        ids = ids + ids
    return [ids[i * n_tokens + i : (i + 1) * n_tokens + i] for i in range(batch)]  # offset: distinct blocks


@torch.inference_mode()
def contiguous(model, ids: list[list[int]], steps: int, device) -> tuple[list[float], list[list[int]]]:
    cache = DynamicCache(config=model.config)
    kw = engine.cache_keyword(model)
    x = torch.tensor(ids, device=device)
    p = x.shape[1]
    logits = model(input_ids=x, use_cache=True, logits_to_keep=1, **{kw: cache}).logits[:, -1]
    out, times = [], []
    for s in range(steps):
        token = logits.argmax(-1)  # (B,)
        out.append(token.tolist())
        sync(device)
        t = time.perf_counter()
        positions = torch.full((len(ids), 1), p + s, device=device)
        logits = model(input_ids=token[:, None], position_ids=positions, use_cache=True, logits_to_keep=1, **{kw: cache}).logits[:, -1]
        sync(device)
        times.append(time.perf_counter() - t)
    return times, [list(col) for col in zip(*out)]


def paged(model, tokenizer, ids, steps: int, block_size: int, device) -> tuple[list[float], list[float], list[list[int]]]:
    blocks = len(ids) * (-(-(len(ids[0]) + steps + 2) // block_size))
    s = PagedEngine(model, tokenizer, blocks, block_size, stop_at_eos=False, record_frames=False)
    for i, x in enumerate(ids):
        s.submit(Request(f"r{i}", x, steps + 2))
    forward_times = []
    timed_forward = runner_module.forward

    def forward(*args, **kw):
        sync(device)
        t = time.perf_counter()
        out = timed_forward(*args, **kw)
        sync(device)
        forward_times.append(time.perf_counter() - t)
        return out

    runner_module.forward = forward
    step_times = []
    try:
        with torch.inference_mode():
            s.step()  # the prompts
            for _ in range(steps):
                sync(device)
                t = time.perf_counter()
                s.step()
                sync(device)
                step_times.append(time.perf_counter() - t)
    finally:
        runner_module.forward = timed_forward
    return forward_times[1:], step_times, [r.generated[:steps] for r in s.requests]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: the best available)")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--model", default=None)
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (default: 1,8 on GPU, 1,4 on CPU)")
    p.add_argument("--prompt-tokens", default=None, help="comma-separated prompt lengths (default: 512,2048 on GPU, 128 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed decode steps (default: 32 on GPU, 8 on CPU)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--out", default=os.environ.get("OUT") and os.path.join(os.environ["OUT"], "paged_bench.json"))
    args = p.parse_args()

    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    gpu = device.type == "cuda"
    batches = [int(b) for b in (args.batch or ("1,8" if gpu else "1,4")).split(",")]
    lengths = [int(n) for n in (args.prompt_tokens or ("512,2048" if gpu else "128")).split(",")]
    steps = args.steps or (32 if gpu else 8)
    card = torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine()
    print(f"{loaded.summary.name} on {device} ({card}), {model.dtype}, block size {args.block_size}, {steps} timed steps")
    print(f"{'batch':>5} {'prompt':>6} {'contiguous ms':>13} {'paged fwd ms':>12} {'x':>5} {'paged step ms':>13} {'x':>5} {'tokens agree':>12}")
    rows = []
    for batch in batches:
        for n in lengths:
            ids = prompts(tokenizer, batch, n)
            contiguous(model, ids, 2, device)  # warm-up
            paged(model, tokenizer, ids, 2, args.block_size, device)
            c_times, c_tokens = contiguous(model, ids, steps, device)
            f_times, s_times, p_tokens = paged(model, tokenizer, ids, steps, args.block_size, device)
            c, f, st = (1000 * statistics.median(t) for t in (c_times, f_times, s_times))
            agree = sum(a == b for x, y in zip(c_tokens, p_tokens) for a, b in zip(x, y)) / (batch * steps)
            rows.append({
                "batch": batch, "prompt_tokens": n, "contiguous_ms": c, "paged_forward_ms": f, "paged_step_ms": st,
                "forward_ratio": f / c, "step_ratio": st / c, "tokens_agree": agree,
            })
            print(f"{batch:>5} {n:>6} {c:>13.2f} {f:>12.2f} {f / c:>5.2f} {st:>13.2f} {st / c:>5.2f} {agree:>12.0%}")
    result = {
        "model": loaded.summary.name, "device": str(device), "card": card, "dtype": str(model.dtype).replace("torch.", ""),
        "block_size": args.block_size, "steps": steps, "torch": torch.__version__, "transformers": transformers.__version__,
        "cpu_threads": torch.get_num_threads(), "rows": rows,
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
