"""What scoring the prompt adds to the prefill, per policy, with the fused column sums and without.

    python benchmarks/prefill_scoring.py [--tokens 8184] [--repeats 5] [--out prefill_scoring.json]

On the GPU model ($KVVIZ_MODEL or the embedded SmolLM2, bf16), one process: the prefill of
engine.run (one new token) for ``full`` and for each scoring policy at a budget of 1,024, median
of ``--repeats`` after a warm-up; a policy's "added" is its prefill minus full's. H2O and
ObservedAttention are timed twice: with the prompt's accumulated attention from two fused
attention calls (``kvviz.policies.column_sums``, the default on CUDA) and from the chunked
float32 probabilities (what the CPU computes); the kept entries of the two are compared.
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
from kvviz.policies import column_sums  # noqa: E402
from kvviz.runtime import engine  # noqa: E402
from kvviz.runtime.bench import prompt_ids  # noqa: E402

FUSED = column_sums.usable


def prefill_s(model, tok, ids, policy, budget, repeats):
    kw = dict(budget=budget, max_new_tokens=1, stop_at_eos=False)
    engine.run(model, tok, ids, policy, **kw)  # warm-up
    times, trace = [], None
    for _ in range(repeats):
        trace = engine.run(model, tok, ids, policy, **kw)
        times.append(trace.timings["prefill_s"])
    return statistics.median(times), trace


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=8184)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    lm = load_model(os.environ.get("KVVIZ_MODEL") or None, device="cuda")
    model, tok = lm.model, lm.tokenizer
    ids = prompt_ids(tok, args.tokens)
    full, _ = prefill_s(model, tok, ids, "full", None, args.repeats)
    rows = [{"policy": "full", "prefill_ms": round(1000 * full, 1), "added_ms": 0.0}]
    for policy in ["h2o", "observed_attention", "snapkv", "tova"]:
        fused, trace_f = prefill_s(model, tok, ids, policy, args.budget, args.repeats)
        row = {"policy": policy, "prefill_ms": round(1000 * fused, 1), "added_ms": round(1000 * (fused - full), 1)}
        if policy in ("h2o", "observed_attention"):
            column_sums.usable = lambda q, k: False
            try:
                chunked, trace_c = prefill_s(model, tok, ids, policy, args.budget, args.repeats)
            finally:
                column_sums.usable = FUSED
            kept_f = trace_f.evicted_at_step[..., : len(ids)] == -1
            kept_c = trace_c.evicted_at_step[..., : len(ids)] == -1
            row.update(chunked_prefill_ms=round(1000 * chunked, 1), chunked_added_ms=round(1000 * (chunked - full), 1),
                       kept_agreement=round(float((kept_f == kept_c).mean()), 6))
        rows.append(row)
        print(json.dumps(row))
    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]), "card": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": lm.name if hasattr(lm, "name") else "",
              "dtype": str(next(model.parameters()).dtype), "tokens": len(ids), "budget": args.budget, "repeats": args.repeats,
              "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
