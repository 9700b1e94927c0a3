"""``python -m kvviz paged``: several prompts decoded together from a paged KV cache (vLLM's
PagedAttention layout): block tables, prefix hits, copy-on-write, preemptions, and the memory
each allocation scheme would waste on the same requests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kvviz.commands.run import add_model_args, load, policy_spec

HELP = "decode several prompts from a paged KV cache (block tables, prefix sharing, copy-on-write, preemption)"


def configure(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for several requests)")
    src.add_argument("--prompts-file", type=Path, help="file with one prompt per line")
    p.add_argument("--block-size", type=int, default=16, help="token slots per block (vLLM's default: 16)")
    p.add_argument("--num-blocks", type=int, default=64, help="blocks in the pool (per layer)")
    p.add_argument("--n", type=int, default=1, help="parallel samples per prompt: they share the prompt's blocks (copy-on-write)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (each request and sample has its own seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--policy", default="full", help="eviction policy on the paged cache, e.g. h2o or streaming_llm:n_sink=4 (default: full)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="policy parameter (repeatable)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--budget", type=int, help="kept entries per layer and KV head")
    size.add_argument("--ratio", type=float, help="kept fraction of the prompt")
    p.add_argument(
        "--eviction", choices=("token", "block"), default="token",
        help="token: the policy evicts entry by entry (holes; a block is freed only when empty); "
        "block: whole blocks are dropped, ranked by the share of their entries the policy keeps",
    )
    p.add_argument("--no-prefix-caching", action="store_true", help="do not reuse full blocks with the same prefix")
    p.add_argument("--memory-mib", type=float, help="memory budget for 'requests that fit' (default: the pool's size)")
    add_model_args(p)
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def main(args) -> int:
    from kvviz.paged.run import PagedSettings, run_paged

    prompts = args.prompt if args.prompt is not None else args.prompts_file.read_text().splitlines()
    spec = policy_spec(args)
    settings = PagedSettings(
        block_size=args.block_size, num_blocks=args.num_blocks, n=args.n, max_new_tokens=args.max_new_tokens,
        sample=args.sample, seed=args.seed, chat=args.chat, policy=spec if spec.takes_budget else None,
        eviction=args.eviction, prefix_caching=not args.no_prefix_caching,
        memory_budget_bytes=None if args.memory_mib is None else int(args.memory_mib * 2**20),
    )
    settings.validate()  # before loading the model
    if args.device_map:
        raise ValueError("--device-map auto: the paged cache keeps one block pool on one device; load the model on one device.")
    loaded = load(args)
    run = run_paged(loaded.model, loaded.tokenizer, prompts, settings, model_name=loaded.summary.name)
    if args.json:
        print(json.dumps(run.summary()))
        return 0
    for r in run.requests:
        print(f"[{r['id']}] {r['generated_text']!r}")
        print(f"      {r['prompt_tokens']} prompt tokens, {r['prefix_hit_blocks']} blocks from the prefix cache, blocks {r['block_table']}")
    print(text_summary(run), file=sys.stderr)
    return 0


def text_summary(run) -> str:
    from kvviz.record.metrics import format_bytes

    w = run.waste
    paged = ", ".join(f"{bs}: {f:.1%}" for bs, f in w["paged"].items())
    fits = w["fits"]
    fit_paged = ", ".join(f"{bs}: {k}" for bs, k in fits["paged"].items())
    return "\n".join([
        f"\n{len(run.requests)} requests, pool of {run.num_blocks} blocks x {run.block_size} slots "
        f"({format_bytes(run.num_blocks * run.block_bytes)}), policy {run.policy}; {run.elapsed_s:.2f} s on {run.device}",
        f"prefix-hit blocks {run.prefix_hit_blocks}, copy-on-write copies {run.cow_copies}, "
        f"preemptions {run.preemptions}, peak blocks used {run.peak_blocks_used}",
        f"KV bytes reserved but empty: reserve max context {w['reserve_max']:.1%}, exact {w['exact']:.1%}, "
        f"static batch {w['static_batch']:.1%}, paged by block size {paged}",
        f"requests that fit {format_bytes(w['budget_bytes'])}: reserve max {fits['reserve_max']}, exact {fits['exact']}, static batch {fits['static_batch']}, "
        f"paged {fit_paged} (of {fits['requests']})",
    ])
