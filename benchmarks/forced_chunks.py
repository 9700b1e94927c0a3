"""A forced continuation read in chunks against step by step: time, and how far the rounding moves.

    python benchmarks/forced_chunks.py [--device cuda] [--repeats 3] [--out forced_chunks.json]

On the model load_model picks ($KVVIZ_MODEL or the embedded SmolLM2, its default dtype), one process:
the first ``--context`` tokens of the built-in long document as the prompt, the next
``--continuation`` forced, as a sweep's ppl task. For the full cache and the prompt-only policies
(SnapKV, PyramidKV at ``--ratio``): the whole ``engine.run`` call step by step (``forced_chunk=0``,
from a CUDA graph on a GPU) and read in chunks (the default), alternated, medians. Then what the
rounding of the larger products moves: KL(stepped ‖ chunked) per step against KL between two
stepped runs (a GPU's run-to-run difference, ``full_cache_repeatability.py``), perplexities, and
a policy that steps (H2O) scored against each reference: how much its ``kl_full`` moves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kvviz.model.loading import load_model  # noqa: E402
from kvviz.record import metrics  # noqa: E402
from kvviz.record.examples import long_document  # noqa: E402
from kvviz.runtime import engine  # noqa: E402


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per step KL(p ‖ q) in nats, both (steps, vocab) log-probabilities."""
    p, q = p.double(), q.double()
    return (p.exp() * (p - q)).nansum(-1).clamp_min(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--continuation", type=int, default=256)
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=3, help="at least 2 (two stepped runs are compared)")
    ap.add_argument("--out")
    args = ap.parse_args()
    args.repeats = max(args.repeats, 2)
    loaded = load_model(device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    ids = tok(long_document(), add_special_tokens=False)["input_ids"]
    prompt, forced = ids[: args.context], ids[args.context : args.context + args.continuation]
    cuda = args.device == "cuda"

    def run(spec, chunk, **kw):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        trace = engine.run(model, tok, prompt, spec, forced_ids=forced, keep_logprobs=True, top_k=1, forced_chunk=chunk, **kw)
        if cuda:
            torch.cuda.synchronize()
        return trace, time.perf_counter() - t

    out = {"card": torch.cuda.get_device_name() if cuda else args.device, "dtype": loaded.summary.dtype,
           "torch": torch.__version__, "command": " ".join(sys.argv), "context": args.context,
           "continuation": args.continuation, "ratio": args.ratio, "policies": {}}
    for spec in ("full", f"snapkv:ratio={args.ratio}", f"pyramidkv:ratio={args.ratio}"):
        run(spec, 0)
        run(spec, 256)  # warm-up: graph capture, the blocks' build, allocator
        seconds = {"stepped": [], "chunked": []}
        logprobs: dict[str, list] = {"stepped": [], "chunked": []}
        paths = {}
        for _ in range(args.repeats):
            for name, chunk in (("stepped", 0), ("chunked", 256)):
                trace, s = run(spec, chunk)
                seconds[name].append(s)
                logprobs[name].append(trace.extra["logprobs"].float().cpu())
                paths[name] = trace.timings["decode_path"]
        step_vs_chunk = kl(logprobs["stepped"][0], logprobs["chunked"][0])
        step_vs_step = kl(logprobs["stepped"][0], logprobs["stepped"][1])
        chosen = torch.tensor(forced)[:, None]
        row = {
            "paths": paths,
            "seconds": {k: round(statistics.median(v), 4) for k, v in seconds.items()},
            "speedup": round(statistics.median(seconds["stepped"]) / statistics.median(seconds["chunked"]), 2),
            "kl_stepped_vs_chunked": {"mean": float(step_vs_chunk.mean()), "max": float(step_vs_chunk.max())},
            "kl_stepped_vs_stepped": {"mean": float(step_vs_step.mean()), "max": float(step_vs_step.max())},
            "top1_stepped_vs_chunked": float((logprobs["stepped"][0].argmax(-1) == logprobs["chunked"][0].argmax(-1)).float().mean()),
            "ppl": {k: metrics.perplexity(v[0].gather(1, chosen)[:, 0].numpy()) for k, v in logprobs.items()},
        }
        out["policies"][spec] = row
        print(spec, json.dumps(row), flush=True)
        if spec == "full":
            references = {"stepped": logprobs["stepped"][0], "chunked": logprobs["chunked"][0]}
    h2o, _ = run(f"h2o:ratio={args.ratio}", 0)
    got = h2o.extra["logprobs"].float().cpu()
    moved = {k: float(kl(ref, got).mean()) for k, ref in references.items()}
    out["h2o_kl_full"] = {**moved, "relative_change": abs(moved["chunked"] - moved["stepped"]) / moved["stepped"]}
    print("h2o kl_full", json.dumps(out["h2o_kl_full"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
