"""Command line: ``python -m kvviz policies`` and ``python -m kvviz run``.

Errors (unknown policy or parameter, bad budget, empty or too long prompt, a model that does
not load) end with a one-line message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kvviz", description="Explore the KV cache of a real language model.")
    sub = p.add_subparsers(dest="command", required=True)

    pol = sub.add_parser("policies", help="list every cache policy with its family, parameters and help")
    pol.add_argument("--json", action="store_true", help="print JSON")

    run = sub.add_parser("run", help="run a prompt under a cache policy")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", type=Path, help="file holding the prompt")
    run.add_argument("--policy", default="full", help="policy name or composition, e.g. h2o or snapkv+quant")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="policy parameter (repeatable)")
    size = run.add_mutually_exclusive_group()
    size.add_argument("--budget", type=int, help="kept entries per layer and KV head")
    size.add_argument("--ratio", type=float, help="kept fraction of the prompt")
    run.add_argument("--max-new-tokens", type=int, default=32)
    run.add_argument("--model", help="HF id, local directory or .gguf file (default: $KVVIZ_MODEL or the embedded SmolLM2)")
    run.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    run.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bf16 on GPU, fp32 on CPU)")
    run.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    run.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--save-trace", type=Path, help="save the Trace (.json or .npz)")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def parse_params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param expects KEY=VALUE, got '{item}'.")
        out[key.strip()] = value.strip()
    return out


def cmd_policies(args) -> int:
    from kvviz.policies import registry

    described = [cls.describe() for cls in registry().values()]
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for d in described:
        print(f"{d['name']}  [{d['family']}]  {d['paper']}")
        print(f"    {d['summary']}")
        for prm in d["params"]:
            rng = f" choices {prm['choices']}" if prm["choices"] else ""
            if prm["min"] is not None or prm["max"] is not None:
                rng += f" range [{prm['min']}, {prm['max']}]"
            print(f"    --param {prm['name']}=<{prm['type']}>  default {prm['default']}{rng}: {prm['help']}")
        print()
    return 0


def cmd_run(args) -> int:
    from kvviz import engine, policies
    from kvviz.models import load_model
    from kvviz.tokens import encode_prompt

    text = args.prompt if args.prompt is not None else args.prompt_file.read_text()
    pipeline = policies.build(args.policy, parse_params(args.param), budget=args.budget, ratio=args.ratio)
    quiet_transformers()
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    ids = encode_prompt(loaded.tokenizer, text, chat=args.chat, max_context=loaded.summary.max_context)
    trace = engine.run(
        loaded.model, loaded.tokenizer, ids, pipeline,
        max_new_tokens=args.max_new_tokens, sample=args.sample, seed=args.seed, model_name=loaded.summary.name,
    )
    if args.save_trace:
        trace.save(args.save_trace)
    if args.json:
        print(json.dumps(run_summary(trace)))
    else:
        print(trace.generated_text)
        saved = 1 - trace.kv_bytes[-1] / trace.kv_bytes_full[-1]
        print(
            f"\n[{trace.policy}] {len(ids)} prompt tokens, {trace.n_steps} generated; "
            f"KV cache {trace.kv_bytes[-1] / 2**20:.2f} MiB vs {trace.kv_bytes_full[-1] / 2**20:.2f} MiB full "
            f"({saved:.0%} saved); {trace.timings['total_s']:.2f} s on {trace.device}",
            file=sys.stderr,
        )
    return 0


def quiet_transformers() -> None:
    """Keep stderr for kvviz's own one-line messages: no progress bars or advice from transformers."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def run_summary(trace) -> dict:
    return {
        "model": trace.model,
        "device": trace.device,
        "dtype": trace.dtype,
        "policy": trace.policy,
        "params": trace.params,
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kvviz.policies import PolicyError
    from kvviz.tokens import PromptError

    expected = (PolicyError, PromptError, ValueError, OSError)
    try:
        from kvviz.models import ModelLoadError

        expected = expected + (ModelLoadError,)
    except ImportError:
        pass
    try:
        return cmd_policies(args) if args.command == "policies" else cmd_run(args)
    except expected as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
