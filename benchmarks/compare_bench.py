"""Benchmark of the Compare page's work on a real model: the seven runs of the passkey preset
(the full cache once; H2O, SnapKV window=8 and StreamingLLM at 25%, each free and teacher-forced),
and four policies on a long prompt; then the run bundle of each: its size, the time to write it
and to load it back (validation included).

    python benchmarks/compare_bench.py                       # CPU: passkey only (minutes on a busy CPU)
    python benchmarks/compare_bench.py --device cuda --long 2000 --out compare_bench.json

Prints a table and writes JSON (``--out``, or $OUT/compare_bench.json when $OUT is set). One run
of each case after a warm-up run of the full cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvviz.runs import bundle  # noqa: E402
from kvviz.compare import run as comparison
from kvviz.record import examples as data
from kvviz.runtime import engine
from kvviz.runs.bundle import RunSettings  # noqa: E402
from kvviz.compare.result import ComparisonResult  # noqa: E402
from kvviz.model.loading import load_model  # noqa: E402
from kvviz.policies.spec import PolicySpec  # noqa: E402
from kvviz.record.text import encode_prompt  # noqa: E402

PASSKEY = ["h2o:ratio=0.25", "snapkv:window=8,ratio=0.25", "streaming_llm:ratio=0.25"]
LONG = ["h2o:ratio=0.25", "snapkv:window=16,ratio=0.25", "streaming_llm:ratio=0.25", "quant:bits=4"]


def case(loaded, name: str, text: str, chat: bool, specs: list[str], new_tokens: int, ids: list[int] | None = None) -> dict:
    settings = RunSettings(loaded.summary.name, name, text, chat, [PolicySpec.parse(s) for s in specs], new_tokens)
    ids = ids or encode_prompt(loaded.tokenizer, text, chat=chat)
    t = time.perf_counter()
    result = comparison.compare(loaded.model, loaded.tokenizer, ids, settings, model_name=loaded.summary.name)
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    text_json = result.bundle_json(step=0)
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    back = ComparisonResult.from_bundle(bundle.load(text_json))
    load_s = time.perf_counter() - t
    assert [r.trace.generated_ids for r in back.runs] == [r.trace.generated_ids for r in result.runs]
    return {
        "case": name,
        "prompt_tokens": len(ids),
        "new_tokens": new_tokens,
        "policies": specs,
        "runs": 1 + 2 * len(specs),
        "seconds": round(seconds, 2),
        "seconds_per_run": {k: round(v, 2) for k, v in result.wall_s.items()},
        "outputs": {"full": result.full.generated_text} | {r.spec.to_text(): r.trace.generated_text for r in result.runs},
        "first_divergence": {r.spec.to_text(): r.first_divergence(result.full) for r in result.runs},
        "bundle_mb": round(len(text_json.encode()) / 1e6, 2),
        "bundle_fits": len(text_json.encode()) <= bundle.MAX_BYTES,
        "bundle_write_s": round(write_s, 2),
        "bundle_load_s": round(load_s, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None)
    p.add_argument("--long", type=int, default=0, help="tokens of the long document for the four-policy case (0: skip)")
    p.add_argument("--new-tokens", type=int, default=32, help="new tokens of the long case")
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) / "compare_bench.json" if os.environ.get("OUT") else None)
    args = p.parse_args()
    loaded = load_model(device=args.device)
    warm = encode_prompt(loaded.tokenizer, data.CHAT_QUESTION, chat=True)
    engine.run(loaded.model, loaded.tokenizer, warm, "full", max_new_tokens=4)
    passkey_text, key = data.passkey_prompt(data.DEFAULT_PASSKEY_FILLER, data.DEFAULT_PASSKEY_DEPTH)
    rows = [case(loaded, "passkey preset", passkey_text, True, PASSKEY, 12)]
    rows[0]["passkey"] = key
    if args.long:
        ids = loaded.tokenizer(data.long_document()).input_ids[: args.long]
        rows.append(case(loaded, f"long document, {args.long} tokens", "", False, LONG, args.new_tokens, ids=ids))
    device = f"{loaded.summary.device} ({torch.cuda.get_device_name() if loaded.summary.device == 'cuda' else platform.processor() or 'cpu'})"
    print(f"{'case':<32} {'prompt':>6} {'new':>4} {'runs':>4} {'seconds':>8} {'bundle MB':>9} {'write s':>7} {'load s':>6}  device: {device}")
    for r in rows:
        print(f"{r['case']:<32} {r['prompt_tokens']:>6} {r['new_tokens']:>4} {r['runs']:>4} {r['seconds']:>8.2f} {r['bundle_mb']:>9.2f} {r['bundle_write_s']:>7.2f} {r['bundle_load_s']:>6.2f}")
        for spec, out in r["outputs"].items():
            print(f"    {spec:<30} {out!r}")
    if args.out:
        args.out.write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
