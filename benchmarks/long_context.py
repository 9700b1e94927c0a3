"""A 1B-shaped Llama with RANDOM weights and a 32k-token prompt on one GPU: is the app still interactive?

    python benchmarks/long_context.py [--prompt-tokens 32768] [--new-tokens 32] [--budget 2048]
        [--policies full,snapkv,h2o,streaming_llm] [--out long_context.json]

The model is built in this process with Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 query
heads over 8 KV heads of 64, MLP 8192, vocabulary 128,256, bf16; its output matrix apart from the embedding, as the
random model builds it: 1.5B parameters) and filled with
random numbers (``kvviz.model.random_model``): nothing is downloaded and THE TOKENS MEAN NOTHING;
time and memory are those of the shape. The prompt is random token ids.

Timed, each after a warm-up on a short prompt (graph capture, kernels):
  run        engine.run per policy: prefill, median decode step, whole call, KV held, peak memory
  overview   the Attention page's overview of every layer and head (kvviz.attention.maps.overview)
  token map  what the Live page builds from a run's trace at its last step: the token records,
             the window of the token view (``kvviz.ui.token_window``: at most 2,048 chips), the
             token map and retention charts (figure build time and the size of their JSON)
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

from kvviz.model.random_model import RANDOM_WEIGHTS_NOTE, IdTokenizer, random_llama  # noqa: E402
from kvviz.runtime import engine  # noqa: E402

WINDOW = 2048  # kvviz.ui.token_window.WINDOW (not imported: that module imports Streamlit)


def llama_1b_config(max_context: int):
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=max_context,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    return config


def clock(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompt-tokens", type=int, default=32768)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--policies", default="full,snapkv,h2o,streaming_llm")
    ap.add_argument("--out", type=Path)
    return ap.parse_args(argv)


def run_row(model, ids, policy, args) -> tuple[dict, object]:
    budget = None if policy == "full" else args.budget
    kw = dict(budget=budget, max_new_tokens=args.new_tokens, stop_at_eos=False)
    engine.run(model, IdTokenizer(), ids[: 2 * args.budget], policy, **kw)  # warm-up: kernels, graph capture
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    trace, wall = clock(lambda: engine.run(model, IdTokenizer(), ids, policy, **kw))
    steps = trace.timings["step_s"][1:] or trace.timings["step_s"]
    return {
        "policy": policy, "budget": budget, "decode_path": trace.timings.get("decode_path", "eager"),
        "prefill_s": round(trace.timings["prefill_s"], 4), "median_step_ms": round(1000 * statistics.median(steps), 3),
        "whole_call_s": round(wall, 3), "kv_bytes": int(trace.kv_bytes[-1]), "kv_bytes_full": int(trace.kv_bytes_full[-1]),
        "extra_peak_bytes": int(torch.cuda.max_memory_allocated() - base),
    }, trace


def views_row(trace) -> dict:
    """What the Live page builds from the trace at its last step, timed on the host's CPU."""
    from kvviz.charts import retention as retention_charts
    from kvviz.charts.token_map import token_states_figure
    from kvviz.record.token_states import token_records

    step = trace.n_steps - 1
    row = {}
    t = time.perf_counter()
    records = token_records(trace, step)
    row["token_records_s"] = round(time.perf_counter() - t, 3)
    row["tokens"] = len(records)
    row["token_view_chips"] = min(len(records), WINDOW)
    for name, build in [("token_map", lambda: token_states_figure(records, step)),
                        ("retention_steps", lambda: retention_charts.retention_steps_figure(trace, step=step)),
                        ("occupancy", lambda: retention_charts.occupancy_figure(trace, step))]:
        t = time.perf_counter()
        fig = build()
        row[f"{name}_s"] = round(time.perf_counter() - t, 3)
        row[f"{name}_json_bytes"] = len(fig.to_json())
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("long_context: FAILED: needs a CUDA GPU")
        return 1
    import transformers

    print(RANDOM_WEIGHTS_NOTE)
    config = llama_1b_config(args.prompt_tokens + args.new_tokens + 8)
    model = random_llama(config, device_map={"": 0})
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, config.vocab_size, (args.prompt_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    result = {
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]), "card": torch.cuda.get_device_name(0), "torch": torch.__version__, "transformers": transformers.__version__,
        "host": platform.node(), "model": "random Llama-3.2-1B shape (16 layers, 32 q / 8 kv heads of 64, output matrix untied, bf16)",
        "parameters": params, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "runs": [],
        "weights_note": RANDOM_WEIGHTS_NOTE,
    }
    status = 0
    views_done = False
    for policy in args.policies.split(","):
        try:
            row, trace = run_row(model, ids, policy, args)
            if not views_done and policy != "full":
                try:
                    row["views"] = views_row(trace)
                except ImportError as e:  # plotly: the app's extra, absent on a bare GPU host
                    row["views"] = {"error": f"{type(e).__name__}: {e}"}
                views_done = True
            del trace
        except Exception as e:  # keep the other rows
            row, status = {"policy": policy, "error": f"{type(e).__name__}: {e}"[:300]}, 1
        torch.cuda.empty_cache()
        result["runs"].append(row)
        print(json.dumps(row))
    try:
        from kvviz.attention import maps as attention_maps

        attention_maps.overview(model, ids[:512], pool="max", keep_qk_bytes=512 << 20)  # warm-up
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _, seconds = clock(lambda: attention_maps.overview(model, ids, pool="max", keep_qk_bytes=512 << 20))
        result["overview"] = {"seconds": round(seconds, 3), "extra_peak_bytes": int(torch.cuda.max_memory_allocated() - base)}
    except Exception as e:
        result["overview"], status = {"error": f"{type(e).__name__}: {e}"[:300]}, 1
    print(json.dumps(result["overview"]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
