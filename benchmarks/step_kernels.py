"""Where a policy's decode step spends its GPU time: the kernels one replayed step launches, by name.

    python benchmarks/step_kernels.py [--prompt-tokens 2048] [--new-tokens 128] [--ratio 0.25]
        [--policies full,h2o,...] [--top 12] [--out step_kernels.json]

One process, the GPU model ($KVVIZ_MODEL or the embedded SmolLM2, bf16), the fused blocks and the
policies' fused steps built first (``kvviz.runtime.fused``, ``kvviz.runtime.fused_steps``). Per
policy: the median decode step (two runs, as ``kvviz bench`` times it, with the compiled static
cache's ``generate`` timed before and after the rows in the same process), then a profiled run of
16 steps minus a profiled prefill-only run: kernels per step, their GPU time per step, and the
``--top`` kernels by GPU time (calls and microseconds per step), so a step's cost can be read
kernel by kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kvviz.model.loading import load_model  # noqa: E402
from kvviz.runtime import engine, fused  # noqa: E402
from kvviz.runtime.bench import commit, prompt_ids, time_generate  # noqa: E402

POLICIES = "full,snapkv,h2o,tova,streaming_llm,knorm,quest,kivi,quant"


def cuda_kernels(call) -> dict[str, tuple[int, float]]:
    """name -> (calls, GPU µs) of the CUDA kernels ``call()`` launched."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    out: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out[e.name][0] += 1
            out[e.name][1] += e.device_time
    return {k: (v[0], v[1]) for k, v in out.items()}


def per_step(model, tok, ids, spec, steps: int = 16, use_fused: bool = True) -> dict[str, tuple[float, float]]:
    """name -> (calls, GPU µs) per decode step: a run of ``steps`` steps minus a prefill-only run,
    both after a warm-up run at their shapes and the background builds they asked for (a build
    during a profiled run would count the compiler's own benchmark kernels)."""
    kw = dict(stop_at_eos=False, fused=use_fused)
    for n in (steps, 1):
        engine.run(model, tok, ids, spec, max_new_tokens=n, **kw)
    fused.wait()
    long = cuda_kernels(lambda: engine.run(model, tok, ids, spec, max_new_tokens=steps, **kw))
    short = cuda_kernels(lambda: engine.run(model, tok, ids, spec, max_new_tokens=1, **kw))
    out = {}
    for name in long:
        n = (long[name][0] - short.get(name, (0, 0.0))[0]) / (steps - 1)
        us = (long[name][1] - short.get(name, (0, 0.0))[1]) / (steps - 1)
        if n > 0:
            out[name] = (n, us)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompt-tokens", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--policies", default=POLICIES)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    loaded = load_model(os.environ.get("KVVIZ_MODEL"), device="cuda", dtype="bfloat16")
    model, tok = loaded.model, loaded.tokenizer
    ids = prompt_ids(tok, args.prompt_tokens)
    out: dict = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "commit": commit(), "model": loaded.summary.name,
                 "prompt_tokens": len(ids), "new_tokens": args.new_tokens, "static_ms": [], "rows": []}

    def static():
        time_generate(model, ids, args.new_tokens, static=True)
        ms = statistics.median(1e3 * time_generate(model, ids, args.new_tokens, static=True)[1] for _ in range(2))
        out["static_ms"].append(ms)
        log(f"generate, static cache (compiled): {ms:.2f} ms/step")

    static()
    for name in args.policies.split(","):
        spec = engine.PolicySpec.of(name)
        spec = spec.with_budget(ratio=args.ratio) if spec.takes_budget else spec
        run = lambda n, spec=spec: engine.run(model, tok, ids, spec, max_new_tokens=n, stop_at_eos=False, fused=True)  # noqa: E731
        run(args.new_tokens)  # asks for the blocks and the policy's steps at these shapes
        fused.wait()
        traces = [run(args.new_tokens) for _ in range(2)]
        ms = statistics.median(1e3 * statistics.median(t.timings["step_s"][1:]) for t in traces)
        kernels = per_step(model, tok, ids, spec)
        top = sorted(kernels.items(), key=lambda kv: -kv[1][1])[: args.top]
        row = {"policy": spec.to_text(), "ms_per_step": ms, "path": traces[-1].timings.get("decode_path"),
               "fused": traces[-1].timings.get("fused"), "fused_steps": traces[-1].timings.get("fused_steps"),
               "kernels_per_step": sum(n for n, _ in kernels.values()), "gpu_us_per_step": sum(us for _, us in kernels.values()),
               "top": [{"kernel": k[:120], "calls": round(n, 2), "us": round(us, 1)} for k, (n, us) in top]}
        out["rows"].append(row)
        log(f"{row['policy']}: {ms:.2f} ms/step, {row['kernels_per_step']:.0f} kernels, {row['gpu_us_per_step']:.0f} µs GPU "
            f"({row['path']}, fused {row['fused']}, steps {row['fused_steps']})")
        for t in row["top"]:
            log(f"    {t['calls']:7.2f} × {t['us']:8.1f} µs  {t['kernel']}")
    static()
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
