"""Is a run of the full cache reproducible to the last bit on this device, and on which path?

    python benchmarks/full_cache_repeatability.py [--device cuda] [--runs 4] [--out repeatability.json]

On the model load_model picks ($KVVIZ_MODEL or the embedded SmolLM2, its default dtype), one process: the
first ``--context`` tokens of the built-in long document, the next ``--continuation`` forced
(teacher forcing, as a sweep's reference), ``--runs`` times on each path: the CUDA graph, eager at
a fixed capacity, eager on transformers' own growing cache, and read in chunks (the default of a
forced run of the full cache since stop 35). For runs 2 onwards, the first step
whose (vocab,) log-probabilities differ from run 1's in any bit (null: none). Set
CUBLAS_WORKSPACE_CONFIG before the process starts to try cuBLAS's reproducible setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kvviz.model.loading import load_model  # noqa: E402
from kvviz.record.examples import long_document  # noqa: E402
from kvviz.runtime import engine  # noqa: E402

PATHS = {  # step by step (forced_chunk=0), as a decode; then read in chunks (kvviz.runtime.forced_chunks)
    "graph": dict(forced_chunk=0),
    "eager_fixed_capacity": dict(cuda_graphs=False, fixed_capacity=True, forced_chunk=0),
    "eager_dynamic": dict(cuda_graphs=False, fixed_capacity=False, forced_chunk=0),
    "chunked": {},
}


def first_differing_step(run: torch.Tensor, first: torch.Tensor) -> int | None:
    """The first step (row) where two (steps, vocab) log-probabilities differ in any bit."""
    differ = (run != first) & ~(torch.isinf(run) & torch.isinf(first))
    rows = differ.any(dim=-1).nonzero()
    return int(rows[0]) if len(rows) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--continuation", type=int, default=96)
    ap.add_argument("--out")
    args = ap.parse_args()
    loaded = load_model(device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    ids = tok(long_document(), add_special_tokens=False)["input_ids"]
    prompt, forced = ids[: args.context], ids[args.context : args.context + args.continuation]
    out = {"card": torch.cuda.get_device_name() if args.device == "cuda" else args.device, "dtype": loaded.summary.dtype,
           "torch": torch.__version__, "command": " ".join(sys.argv), "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
           "context": args.context, "continuation": args.continuation, "paths": {}}
    for name, kw in PATHS.items():
        runs = []
        for _ in range(args.runs):
            trace = engine.run(model, tok, prompt, "full", forced_ids=forced, keep_logprobs=True, top_k=1, **kw)
            runs.append(trace.extra["logprobs"].float().cpu())
        out["paths"][name] = [first_differing_step(r, runs[0]) for r in runs[1:]]
        print(name, out["paths"][name], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
