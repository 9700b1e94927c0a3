"""``python -m kvviz run``: one prompt under one cache policy, as text or one JSON object."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HELP = "run a prompt under a cache policy"


def prompt_source(p):
    """--prompt or --prompt-file (one of them required); the group, for a command to add a source."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", type=Path, help="file holding the prompt")
    return src


def configure(p) -> None:
    prompt_source(p)
    p.add_argument("--policy", default="full", help="policy name or composition, e.g. h2o or snapkv+quant (also name:key=value,...)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="policy parameter (repeatable)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--budget", type=int, help="kept entries per layer and KV head")
    size.add_argument("--ratio", type=float, help="kept fraction of the prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    add_model_args(p)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument(
        "--question-after", action="store_true",
        help="query-agnostic: compress the context alone, then append the question (the prompt's last paragraph, after a blank line)",
    )
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-trace", type=Path, help="save the Trace (.json or .npz)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_model_args(p) -> None:
    """--model, --device, --dtype, --device-map: the sidebar's choices, shared by every command that loads a model."""
    p.add_argument("--model", help="HF id, local directory or .gguf file (default: $KVVIZ_MODEL or the embedded SmolLM2)")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument(
        "--device-map", choices=["auto"], metavar="auto",
        help="auto: split the model across this host's GPUs (transformers' device_map=\"auto\", needs accelerate); "
        "each layer's cache lives on that layer's GPU",
    )


def parse_params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param expects KEY=VALUE, got '{item}'.")
        out[key.strip()] = value.strip()
    return out


def policy_spec(args):
    """The PolicySpec of --policy (text form allowed), --param, --budget and --ratio."""
    from kvviz.policies.spec import PolicySpec

    return PolicySpec.of(args.policy, parse_params(args.param), budget=args.budget, ratio=args.ratio)


def load(args):
    """The model of --model/--device/--dtype/--device-map, with transformers kept quiet."""
    from kvviz.model.loading import load_model, pick_device_map, quiet_transformers

    pick_device_map(args.device_map)  # refused before anything loads (no CUDA, no accelerate)
    quiet_transformers()
    return load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)


def read_prompt(args) -> str:
    """The prompt of --prompt or --prompt-file (refused above kvviz.record.text.MAX_PROMPT_CHARS)."""
    from kvviz.record.text import MAX_PROMPT_CHARS, PromptError

    if args.prompt is not None:
        return args.prompt
    if args.prompt_file.stat().st_size > 4 * MAX_PROMPT_CHARS:
        raise PromptError(f"{args.prompt_file} is larger than kvviz takes ({MAX_PROMPT_CHARS:,} characters).")
    return args.prompt_file.read_text(encoding="utf-8")


def check_output_file(path: Path, flag: str) -> None:
    """Refuse a file that cannot be written (its folder missing, not a folder, read-only, or the
    path is a folder) before any work is spent on what it would hold."""
    import os

    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: give a file name (.json or .npz).")
    if not folder.is_dir():
        raise ValueError(f"{flag}: the folder {folder} does not exist.")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag}: the folder {folder} is not writable.")


def main(args) -> int:
    if args.save_trace:
        check_output_file(args.save_trace, "--save-trace")  # before torch is imported and the model loads
    from kvviz.runtime import engine
    from kvviz.policies.spec import budget_notes
    from kvviz.record.text import decode, encode_prompt

    text = read_prompt(args)
    spec = policy_spec(args)
    loaded = load(args)
    ids = encode_prompt(loaded.tokenizer, text, chat=args.chat, max_context=loaded.summary.max_context)
    question_at = None
    if args.question_after:
        from kvviz.record.question import question_start

        question_at = question_start(loaded.tokenizer, ids, text)
    spec.resolve_budget(question_at or len(ids))  # a budget larger than the prompt (the context) fails here, before the run
    for level, text in budget_notes(spec, len(ids)):
        print(f"{'warning' if level == 'warning' else 'note'}: {text}", file=sys.stderr)
    trace = engine.run(
        loaded.model, loaded.tokenizer, ids, spec,
        max_new_tokens=args.max_new_tokens, sample=args.sample, seed=args.seed, model_name=loaded.summary.name,
        question_at=question_at,
    )
    generated_text = decode(loaded.tokenizer, trace.generated_ids)  # the whole sequence decoded: any language
    if args.save_trace:
        trace.save(args.save_trace)
    if args.json:
        print(json.dumps(run_summary(trace) | {"generated_text": generated_text}, ensure_ascii=False))
    else:
        print(generated_text)
        saved = 1 - trace.kv_bytes[-1] / trace.kv_bytes_full[-1]
        print(
            f"\n[{trace.policy}] {len(ids)} prompt tokens, {trace.n_steps} generated; "
            f"KV cache {trace.kv_bytes[-1] / 2**20:.2f} MiB vs {trace.kv_bytes_full[-1] / 2**20:.2f} MiB full "
            f"({saved:.0%} saved); {trace.timings['total_s']:.2f} s on {trace.device}",
            file=sys.stderr,
        )
    return 0



def run_summary(trace) -> dict:
    summary = {
        "model": trace.model,
        "device": trace.device,
        "dtype": trace.dtype,
        "policy": trace.policy,
        "params": trace.params,
        "spec": trace.spec,
        "budget": trace.budget,
        "prompt_tokens": trace.prompt_len,
        "generated_text": trace.generated_text,
        "generated_token_ids": trace.generated_ids,
        "stopped_by": trace.stopped_by,
        "kv_bytes": trace.kv_bytes[-1],
        "kv_bytes_full": trace.kv_bytes_full[-1],
        "bookkeeping_bytes": trace.bookkeeping_bytes[-1],
        "kept_positions": trace.final_kept_positions(),
        "timings": {k: v for k, v in trace.timings.items() if k != "step_s"},
    }
    if trace.device_memory:  # a model split across GPUs: layers, weights, KV and allocated bytes per device
        summary["device_memory"] = trace.device_memory
    return summary
