"""A 7B-shaped Llama with RANDOM weights split across two GPUs: memory per device, time per step.

    python benchmarks/multi_gpu.py [--kv-heads 8] [--prompt-tokens 1024] [--new-tokens 64]
        [--policies full,h2o,snapkv,streaming_llm,quant] [--budget 256] [--max-gpu-memory GIB]
        [--no-one-gpu] [--out multi_gpu.json]

The model is built in this process from Llama-2-7B's shape (hidden 4096, 32 layers, 32 query
heads, MLP 11008, bf16) with ``--kv-heads`` KV heads, on the meta device first, then placed over
the first two GPUs by accelerate's auto device map (what transformers' ``device_map="auto"``
computes) with each GPU capped at ``--max-gpu-memory`` GiB of weights (default: 60% of the
weights, so that no single GPU may hold them all and the model must be split), allocated there
and filled with random numbers. Nothing is downloaded: no hub, no tokenizer (token i reads "<i>").
THE WEIGHTS ARE RANDOM: the tokens mean nothing; memory and time are those of the real shape.

The prompt is ``--prompt-tokens`` random token ids. Each policy runs once to warm up, then once
timed (engine.run, greedy, no stop at EOS): prefill, median decode step, whole call; the K/V
bytes and what torch allocated on each GPU at the end, and the peak. transformers' ``generate``
on the split model is timed the same way as the baseline (full cache). Unless ``--no-one-gpu``,
the same weights are also built on cuda:0 alone and every policy is run there too: the table says
whether the split model generated the same tokens and evicted the same entries.

Exits 1 when fewer than two GPUs are visible, accelerate is missing, the placement did not split
the model over two GPUs, or a run fails (the other runs still run and are written).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # kvviz without installing it

import torch  # noqa: E402

from kvviz.model import devices  # noqa: E402
from kvviz.runtime import engine
from kvviz.runtime.bench import timed  # noqa: E402
from kvviz.record.metrics import format_bytes, index_ranges  # noqa: E402
from kvviz.model.random_model import (  # noqa: E402
    RANDOM_WEIGHTS_NOTE, IdTokenizer, auto_device_map, llama_7b_config, materialize, meta_llama, random_llama,
)

GPUS = (0, 1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kv-heads", type=int, default=8, help="KV heads (8: GQA; 32: Llama-2-7B's MHA)")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=1024)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--policies", default="full,h2o,snapkv,streaming_llm,quant")
    p.add_argument("--budget", type=int, default=256, help="kept entries per layer and KV head for the eviction policies")
    p.add_argument("--max-gpu-memory", type=float, help="GiB of weights each GPU may hold (default: 60%% of the weights)")
    p.add_argument("--no-one-gpu", action="store_true", help="skip the same model on cuda:0 alone")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the results as JSON")
    return p.parse_args(argv)


def placement_of(device_map: dict) -> dict[str, list[int]]:
    """{device: decoder layer indices} of an accelerate device map."""
    out: dict[str, list[int]] = {}
    for name, d in device_map.items():
        device = f"cuda:{d}" if isinstance(d, int) else str(d)  # also "cpu" or "disk" (refused by the caller)
        out.setdefault(device, [])
        if name.startswith("model.layers."):
            out[device].append(int(name.split(".")[2]))
    return out


def timed_run(model, ids, policy, args) -> dict:
    budget = None if policy in ("full", "quant", "kivi") else args.budget
    kw = dict(budget=budget, max_new_tokens=args.new_tokens, stop_at_eos=False)
    engine.run(model, IdTokenizer(), ids, policy, **{**kw, "max_new_tokens": 4})  # warm-up
    gpus = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    for d in gpus:
        torch.cuda.reset_peak_memory_stats(d)
    trace = engine.run(model, IdTokenizer(), ids, policy, **kw)
    steps = trace.timings["step_s"][1:] or trace.timings["step_s"]
    return {
        "policy": policy,
        "budget": budget,
        "device": trace.device,
        "decode_path": trace.timings.get("decode_path", "eager"),  # a split model decodes eagerly; one GPU may replay a graph
        "prefill_s": round(trace.timings["prefill_s"], 4),
        "median_step_ms": round(1000 * statistics.median(steps), 3),
        "total_s": round(trace.timings["total_s"], 3),
        "kv_bytes": trace.kv_bytes[-1],
        "kv_bytes_full": trace.kv_bytes_full[-1],
        "device_memory": trace.device_memory,
        "peak_allocated_by_device": {str(d): int(torch.cuda.max_memory_allocated(d)) for d in gpus},
        "generated_ids": trace.generated_ids,
        "evicted_at_step": trace.evicted_at_step,
    }


def time_generate(model, ids, new_tokens: int) -> float:
    """Seconds per decode step of transformers' generate (full cache): (t(n) - t(1)) / (n - 1)."""
    x = torch.tensor([ids], device=devices.input_device(model))

    def gen(n):
        return timed(model, lambda: model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False))[0]

    gen(2)  # warm-up
    return (gen(new_tokens) - gen(1)) / (new_tokens - 1)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        print(f"multi_gpu: FAILED: needs two CUDA GPUs, torch sees {torch.cuda.device_count() if torch.cuda.is_available() else 0}")
        return 1
    if not devices.accelerate_available():
        print(f"multi_gpu: FAILED: {devices.ACCELERATE_NEEDED}")
        return 1
    import accelerate
    import transformers

    print(RANDOM_WEIGHTS_NOTE)
    config = llama_7b_config(kv_heads=args.kv_heads, layers=args.layers, max_context=max(4096, args.prompt_tokens + args.new_tokens))
    meta = meta_llama(config, torch.bfloat16)
    weights_bytes = sum(p.numel() * p.element_size() for p in meta.parameters())
    cap = int((args.max_gpu_memory * 2**30) if args.max_gpu_memory else 0.6 * weights_bytes)
    device_map = auto_device_map(meta, max_memory={i: cap for i in GPUS})
    placement = placement_of(device_map)
    print(f"weights {format_bytes(weights_bytes)} ({sum(p.numel() for p in meta.parameters()) / 1e9:.2f} B parameters, bf16); "
          f"each GPU capped at {format_bytes(cap)}: " + "; ".join(f"{d} layers {index_ranges(ls)}" for d, ls in placement.items()))
    if set(placement) != {"cuda:0", "cuda:1"} or not all(placement.values()):
        print(f"multi_gpu: FAILED: the device map did not split the decoder layers over cuda:0 and cuda:1: {placement}")
        return 1
    t0 = time.perf_counter()
    model = materialize(meta, device_map, seed=args.seed)
    build_s = time.perf_counter() - t0
    ids = torch.randint(3, config.vocab_size, (args.prompt_tokens,), generator=torch.Generator().manual_seed(args.seed)).tolist()
    names = [torch.cuda.get_device_name(i) for i in GPUS]
    result = {
        "note": RANDOM_WEIGHTS_NOTE,
        "cards": names,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "config": {"hidden": 4096, "layers": args.layers, "q_heads": 32, "kv_heads": args.kv_heads, "intermediate": 11008, "dtype": "bfloat16"},
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "max_gpu_memory_bytes": cap,
        "layers_by_device": placement,
        "weights_by_device": devices.weights_by_device(model),
        "allocated_after_load_by_device": devices.allocated_by_device([torch.device("cuda", i) for i in GPUS]),
        "build_s": round(build_s, 2),
        "runs": [],
        "failures": [],
    }
    status = 0
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    split_runs = {}
    for policy in policies:
        try:
            split_runs[policy] = timed_run(model, ids, policy, args)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the other runs go on
            traceback.print_exc()
            result["failures"].append(f"split {policy}: {type(exc).__name__}: {exc}")
            status = 1
    try:
        result["generate_split_step_ms"] = round(1000 * time_generate(model, ids, args.new_tokens), 3)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        result["failures"].append(f"generate on the split model: {type(exc).__name__}: {exc}")
        status = 1

    one_runs = {}
    if not args.no_one_gpu:
        del model, meta  # the same module: free the split copy before building the one-GPU copy
        torch.cuda.empty_cache()
        try:
            one = random_llama(config, {"": 0}, dtype=torch.bfloat16, seed=args.seed)
            for policy in policies:
                one_runs[policy] = timed_run(one, ids, policy, args)
            del one
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            result["failures"].append(f"one GPU: {type(exc).__name__}: {exc}")
            status = 1

    header = f"{'policy':<14} {'where':<16} {'path':<6} {'prefill s':>9} {'step ms':>8} {'total s':>8}  {'KV per device':<40} same as one GPU"
    print(header)
    print("-" * len(header))
    for policy in policies:
        for where, runs in (("split", split_runs), ("one GPU", one_runs)):
            run = runs.get(policy)
            if run is None:
                continue
            ref = one_runs.get(policy)
            same = None
            if where == "split" and ref is not None:
                same = run["generated_ids"] == ref["generated_ids"] and (run["evicted_at_step"] == ref["evicted_at_step"]).all()
                run["same_as_one_gpu"] = bool(same)
            kv = ", ".join(f"{d} {format_bytes(m['kv_bytes'])}" for d, m in run["device_memory"].items()) or format_bytes(run["kv_bytes"])
            print(f"{policy:<14} {run['device']:<16} {run['decode_path']:<6} {run['prefill_s']:>9.3f} {run['median_step_ms']:>8.2f} {run['total_s']:>8.2f}  {kv:<40} "
                  + ("" if same is None else "yes" if same else "NO"))
            result["runs"].append({"where": where, **{k: v for k, v in run.items() if k != "evicted_at_step"}})
    if "generate_split_step_ms" in result:
        print(f"transformers generate on the split model (full cache): {result['generate_split_step_ms']:.2f} ms per step")
    for d, m in (split_runs.get(policies[0], {}).get("device_memory") or {}).items():
        print(f"{d}: layers {index_ranges(m['layers'])}, weights {format_bytes(m['weights_bytes'])}, "
              f"allocated {format_bytes(m.get('allocated_bytes', 0))} at the end of the {policies[0]} run")
    print(f"cards: {', '.join(names)}; torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}")
    print(RANDOM_WEIGHTS_NOTE)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    if status:
        print("multi_gpu: FAILED: " + "; ".join(result["failures"]))
    return status


if __name__ == "__main__":
    sys.exit(main())
