"""What fusing the model's pure blocks (kvviz.runtime.fused) does to a decode step on a GPU.

    python benchmarks/fused_blocks.py [--prompt-tokens 2048] [--new-tokens 128] [--repeats 3]
        [--policies full,snapkv,h2o,...] [--out fused_blocks.json]

One process, the GPU model ($KVVIZ_MODEL or the embedded SmolLM2, bf16). In order:
  1. both transformers baselines (``generate`` with the dynamic cache and with the compiled static
     cache), timed as ``kvviz bench`` times them;
  2. the fused blocks built (a warm-up run asks for them; the build's wall time is reported);
  3. per policy, kvviz's median decode step with the blocks eager and fused, alternated, median of
     ``--repeats`` runs each; the kernels one replayed step launches (torch.profiler, CUDA
     kernels over 16 steps / 16) and their summed GPU time; whether the fused run's tokens equal
     the eager run's (greedy, bf16);
  4. both baselines again (a busy host shows as drift).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kvviz.model.loading import load_model  # noqa: E402
from kvviz.runtime import engine, fused  # noqa: E402
from kvviz.runtime.bench import commit, prompt_ids, time_generate  # noqa: E402
from benchmarks.step_kernels import per_step  # noqa: E402

POLICIES = "full,snapkv,pyramidkv,streaming_llm,h2o,tova,knorm,quant,kivi,random,quest"


def kernels_per_step(model, tok, ids, policy, use_fused):
    """(kernels, GPU ms) per decode step (``step_kernels.per_step``: 16 steps minus the prefill)."""
    kernels = per_step(model, tok, ids, policy, use_fused=use_fused)
    return sum(n for n, _ in kernels.values()), sum(us for _, us in kernels.values()) / 1e3


def step_ms(model, tok, ids, policy, new_tokens, use_fused):
    trace = engine.run(model, tok, ids, policy, max_new_tokens=new_tokens, stop_at_eos=False, fused=use_fused)
    s = trace.timings["step_s"]
    return 1e3 * statistics.median(s[1:] or s), trace


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompt-tokens", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--policies", default=POLICIES)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    loaded = load_model(os.environ.get("KVVIZ_MODEL"), device="cuda", dtype="bfloat16")
    model, tok = loaded.model, loaded.tokenizer
    ids = prompt_ids(tok, args.prompt_tokens)
    out: dict = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "commit": commit(),
                 "model": loaded.summary.name, "dtype": "bfloat16", "prompt_tokens": len(ids), "new_tokens": args.new_tokens,
                 "repeats": args.repeats, "baselines_ms": {}, "rows": []}
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    def baselines():
        for name, static in (("generate dynamic", False), ("generate static compiled", True)):
            runs = [time_generate(model, ids, args.new_tokens, static=static) for _ in range(args.repeats)]
            ms = 1e3 * statistics.median(r[1] for r in runs)
            out["baselines_ms"].setdefault(name, []).append(ms)
            log(f"{name}: {ms:.2f} ms/step")

    time_generate(model, ids[:64], 4)
    t = time.perf_counter()
    time_generate(model, ids, args.new_tokens, static=True)
    out["static_compile_s"] = time.perf_counter() - t
    baselines()

    t = time.perf_counter()
    first = engine.run(model, tok, ids, "h2o", ratio=args.ratio, max_new_tokens=8, stop_at_eos=False, fused=True)
    fused.wait()
    out["fused_build_s"] = time.perf_counter() - t
    out["fused_first_run"] = first.timings["fused"]
    out["fused_state"] = fused.blocks_of(model).state()
    log(f"fused blocks built in {out['fused_build_s']:.1f} s: {out['fused_state']}")

    for name in args.policies.split(","):
        spec = engine.PolicySpec.of(name)
        spec = spec.with_budget(ratio=args.ratio) if spec.takes_budget else spec
        row: dict = {"policy": spec.to_text()}
        for use_fused in (False, True):
            step_ms(model, tok, ids[:256], spec, 8, use_fused)  # warm-up
        eager, fused_ms = [], []
        for _ in range(args.repeats):
            ms, t_eager = step_ms(model, tok, ids, spec, args.new_tokens, False)
            eager.append(ms)
            ms, t_fused = step_ms(model, tok, ids, spec, args.new_tokens, True)
            fused_ms.append(ms)
        row.update(eager_ms=statistics.median(eager), fused_ms=statistics.median(fused_ms),
                   path=t_fused.timings["decode_path"], fused=t_fused.timings["fused"],
                   graph_failure=t_fused.timings.get("graph_failure"),
                   same_tokens=t_eager.generated_ids == t_fused.generated_ids,
                   agree=next((i for i, (a, b) in enumerate(zip(t_eager.generated_ids, t_fused.generated_ids)) if a != b),
                              len(t_eager.generated_ids)))
        if not args.no_profile:
            row["kernels_eager"], row["gpu_ms_eager"] = kernels_per_step(model, tok, ids, spec, False)
            row["kernels_fused"], row["gpu_ms_fused"] = kernels_per_step(model, tok, ids, spec, True)
        out["rows"].append(row)
        log(json.dumps(row))
    baselines()
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
