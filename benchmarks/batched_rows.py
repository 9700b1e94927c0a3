"""What a decode step costs for several rows at once: the evidence for running a sweep's points as
batched rows (issue 17, "the points of a sweep run together").

    python benchmarks/batched_rows.py [--device cpu] [--prompt-tokens 128] [--rows 1,2,5,8] [--out rows.json]

transformers' own forward of the loaded model (the embedded SmolLM2 by default) over a dynamic cache
holding the same prompt in every row, one new token per row per step: the median step of 16 after
a warm-up, per row count. No kvviz policy runs: a row's policy step would come on top, once per
row. If B rows cost little more than one, a sweep's B ratios of one policy could share each step.
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

from kvviz.model import loading  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def step_ms(model, prompt: torch.Tensor, rows: int, device: str, steps: int = 16) -> float:
    from transformers import DynamicCache

    cache = DynamicCache()
    ids = prompt.to(device).expand(rows, -1)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(steps + 2):
        sync(device)
        t = time.perf_counter()
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        sync(device)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times[2:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="a model spec (default: the embedded SmolLM2)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--rows", default="1,2,5,8")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    loaded = loading.load_model(args.model, device=args.device)
    prompt = torch.randint(0, loaded.model.config.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    rows = [int(r) for r in args.rows.split(",")]
    step_ms(loaded.model, prompt, 1, args.device, steps=4)  # warm-up
    result = {r: round(step_ms(loaded.model, prompt, r, args.device), 2) for r in rows}
    import transformers

    row = {
        "command": "python benchmarks/batched_rows.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.machine()}, {torch.get_num_threads()} threads",
        "model": loaded.summary.name if hasattr(loaded, "summary") else str(args.model), "dtype": str(loaded.model.dtype),
        "prompt_tokens": args.prompt_tokens, "step_ms_by_rows": result,
        "per_row_ms": {r: round(ms / r, 2) for r, ms in result.items()},
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
