"""The Live page's comparison of a second policy on the same prompt, with the full cache's run kept
from the first (``comparison.FullRuns``, what the page does) and without (three runs).

    python benchmarks/live_reuse.py [--device cpu] [--prompt-tokens 512] [--new-tokens 32] [--repeats 3] [--out live_reuse.json]

One process: a first policy primes the store; then the second policy's whole comparison is timed
with the kept run and without, alternated ``--repeats`` times (medians reported), after a warm-up.
The two must give the same traces (on a CPU, to the last bit).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kvviz.model.loading import load_model  # noqa: E402
from kvviz.record.examples import long_document  # noqa: E402
from kvviz.model import devices  # noqa: E402
from kvviz.runtime import comparison  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--first", default="tova", help="the policy that runs first (25%% budget)")
    ap.add_argument("--second", default="h2o", help="the policy timed (25%% budget)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    loaded = load_model(device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    ids = tok(long_document(), add_special_tokens=False)["input_ids"][: args.prompt_tokens]
    kw = dict(max_new_tokens=args.new_tokens, stop_at_eos=False)

    def compare(policy: str, store):
        devices.synchronize_streams([devices.input_device(model)])
        t = time.perf_counter()
        runs = dict(comparison.against_full_runs(model, tok, ids, policy, ratio=0.25, full_runs=store, **kw))
        devices.synchronize_streams([devices.input_device(model)])
        return time.perf_counter() - t, runs

    compare(args.second, None)  # warm-up
    store = comparison.FullRuns()
    compare(args.first, store)  # the Live page's previous run on this prompt
    times = {"kept": [], "three runs": []}
    for _ in range(args.repeats):
        kept_s, kept = compare(args.second, store)
        fresh_s, fresh = compare(args.second, None)
        times["kept"].append(kept_s)
        times["three runs"].append(fresh_s)
        assert kept["full"].extra.get("full_run_reused") and "full_run_reused" not in fresh["full"].extra
    same = all(np.array_equal(kept[p].chosen_logprob, fresh[p].chosen_logprob) and kept[p].generated_ids == fresh[p].generated_ids
               for p in ("policy", "full", "forced"))
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "device": str(devices.input_device(model)), "dtype": loaded.summary.dtype, "command": " ".join(["python"] + sys.argv),
        "prompt_tokens": len(ids), "new_tokens": args.new_tokens, "first": args.first, "second": args.second, "seconds": times,
        "median_s": {k: statistics.median(v) for k, v in times.items()}, "same_traces": same,
    }
    print(json.dumps(out["median_s"]), "same traces:", same)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
