"""``python -m kvviz dedup``: repeated spans of a prompt held once in the KV cache (the later
occurrence's keys and values copied from the first, keys re-rotated to their positions), the
per-layer deviation of the copy, and what the next tokens pay at each share of recomputed tokens
(CacheBlend), against the full cache.

  python -m kvviz dedup --example --json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from kvviz.commands.run import add_model_args, load, prompt_source, read_prompt

HELP = "hold repeated prompt spans once in the KV cache: per-layer deviation, KL/top-1 and bytes per recompute share"


def configure(p) -> None:
    prompt_source(p).add_argument("--example", action="store_true", help="a passage that appears twice, with a question after it")
    p.add_argument("--min-len", type=int, default=8, help="shortest repeated span, in tokens (default 8)")
    p.add_argument("--share", type=float, action="append", help="share of copied tokens recomputed per layer (repeatable; "
                   "default 0, 0.1, 0.2, 0.5, 1)")
    p.add_argument("--new-tokens", type=int, default=8, help="next tokens compared with the full cache (default 8)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main(args) -> int:
    from kvviz.dedup.run import MAX_NEW_TOKENS, SHARES, run_dedup
    from kvviz.record.examples import REPEATED_PASSAGE_EXAMPLE
    from kvviz.record.text import encode_prompt

    if args.min_len < 1:
        raise ValueError(f"--min-len must be at least 1, got {args.min_len}")  # before the model loads
    if not 1 <= args.new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"--new-tokens must be between 1 and {MAX_NEW_TOKENS}, got {args.new_tokens}")
    text = REPEATED_PASSAGE_EXAMPLE if args.example else read_prompt(args)
    if args.device_map:
        raise ValueError("--device-map auto: dedup reads every layer's cache on one device; load the model on one device.")
    loaded = load(args)
    ids = encode_prompt(loaded.tokenizer, text, chat=args.chat, max_context=loaded.summary.max_context)
    run = run_dedup(loaded.model, ids, min_len=args.min_len, shares=tuple(args.share or SHARES), new_tokens=args.new_tokens)
    summary: dict[str, Any] = {**run.summary(loaded.tokenizer), "model": loaded.summary.name}
    if args.json:
        print(json.dumps(summary))
        return 0
    for s in summary["spans"]:
        print(f"{s['length']} tokens at {s['occurrences']}: {s['text']!r}")
    print("layer  key deviation  value deviation")
    for i, (k, v) in enumerate(zip(run.key_deviation, run.value_deviation)):
        print(f"{i:5d}  {k:13.3f}  {v:15.3f}")
    print(f"full cache {run.full_bytes:,} bytes; next tokens {loaded.tokenizer.decode(run.full_ids)!r}", file=sys.stderr)
    for r in summary["recompute"]:
        print(f"recompute {r['share']:.0%}: {r['kv_bytes']:,} bytes held ({r['kv_bytes'] / run.full_bytes:.1%}), "
              f"KL {r['kl_mean']:.4f} nats, top-1 {r['top1_agreement']:.0%}")
    return 0
