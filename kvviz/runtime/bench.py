"""Decode speed of kvviz's policies next to transformers' ``generate``, timed the same way.

Both sides are timed as a caller sees them, in the same process, after a warm-up run each:
- the whole call (prefill, every decode step, and for kvviz the Trace), wall clock with the
  device synchronized;
- the median decode step: for kvviz the engine's own per-step times; for ``generate`` the time
  between consecutive calls of a logits processor (one call per generated token, the device
  synchronized at each, which ``generate`` nearly does anyway when it checks for stopping).

Eager decoding of a small model is bound by Python and kernel launches, so its numbers move with
the host CPU: compare rows of one table only. The physical floor of a step is the bytes it must
read (every weight once, and the KV cache the step attends to) over the card's memory bandwidth.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kvviz.model import devices
from kvviz.runtime import comparison, engine, fused
from kvviz.runtime.engine import DecodeOptions
from kvviz.policies.spec import PolicySpec

# Peak memory bandwidth (bytes/s) of cards we know, by a part of their torch device name.
BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H100": 3.35e12, "A100-SXM4-80GB": 2.04e12, "A100": 1.56e12}


@dataclass
class BenchRow:
    config: str  # "transformers generate" or the policy's label
    policy: str  # PolicySpec text; "" for generate
    step_ms: float  # median decode step
    call_s: float  # the whole call
    prefill_ms: float | None = None
    decode_path: str = ""  # "graph" or "eager" (kvviz), as the run reports it; ", fused": every block call fused
    live_s: float | None = None  # the Live page's run: policy, full and teacher-forced runs (comparison.against_full)
    kv_bytes: int | None = None  # held at the last step
    kv_bytes_full: int | None = None
    floor_ms: float | None = None  # bytes read per step / bandwidth
    speedup: float | None = None  # generate's median step / this row's
    speedup_static: float | None = None  # the compiled static-cache generate's median step / this row's (CUDA only)
    graph_failure: str | None = None  # why a CUDA graph could not be captured (the run went on eagerly)
    agree_tokens: int | None = None  # full-cache rows: leading greedy tokens equal to dynamic generate's
    warmup_s: float | None = None  # CUDA: the warm-up runs at these shapes and the fused steps' background build
    fused_steps: str | None = None  # the timed runs' trace.timings["fused_steps"] ("all", "none", "failed: ...")


@dataclass
class BenchResult:
    card: str
    dtype: str
    torch: str
    transformers: str
    commit: str
    model: str
    prompt_tokens: int
    new_tokens: int
    repeats: int
    bandwidth_bytes_s: float | None
    weight_bytes: int
    rows: list[BenchRow] = field(default_factory=list)
    # Each baseline's median step timed before the kvviz rows and again after them (ms); the
    # ratios divide by the faster of the two, and a drift past DRIFT says the host was busy.
    baseline_ms: dict[str, list[float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    fused_build_s: float | None = None  # a warm-up run, then the fused blocks' background build (kvviz.runtime.fused)
    date: str = ""  # when it ran (UTC), as the CLI writes it
    command: str = ""  # the command line that ran it

    def to_dict(self) -> dict:
        return asdict(self)


DRIFT = 0.20  # before/after disagreement of a baseline that marks a busy host


def drift_warning(name: str, before_ms: float, after_ms: float) -> str | None:
    """A warning when a baseline's step before and after the kvviz rows differ by more than DRIFT
    of the faster one (the host was busy for part of the run), else None."""
    fast = min(before_ms, after_ms)
    if abs(after_ms - before_ms) <= DRIFT * fast:
        return None
    return (f"{name} took {before_ms:.2f} ms/step before the kvviz rows and {after_ms:.2f} after: the host was busy, "
            f"so ratios against it are uncertain (they use the faster, {fast:.2f}).")


def bandwidth(card: str) -> float | None:
    """Peak memory bandwidth of a card named ``card`` (torch's name), or None if unknown."""
    for part, bw in BANDWIDTH.items():
        if part in card:
            return bw
    return None


def floor_ms(weight_bytes: int, kv_bytes: int, bandwidth_bytes_s: float | None) -> float | None:
    """The least time a decode step can take: every weight and the held cache read once."""
    if not bandwidth_bytes_s:
        return None
    return 1e3 * (weight_bytes + kv_bytes) / bandwidth_bytes_s


def commit() -> str:
    """This checkout's commit, "+changes" when kvviz's tracked files differ from it (a work tree
    copied over an older checkout, say), or "unknown" outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        head = out.stdout.strip()
        if not head:
            return "unknown"
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], capture_output=True, timeout=10, cwd=here.parent)
        return head + ("+changes" if diff.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prompt_ids(tokenizer, n_tokens: int) -> list[int]:
    """``n_tokens`` of the built-in long document (repeated if more are needed; no chat template)."""
    from kvviz.record.examples import long_document

    text = long_document()
    ids = tokenizer(text).input_ids
    while len(ids) < n_tokens:
        ids = ids + tokenizer("\n\n" + text).input_ids
    return ids[:n_tokens]


def timed(model, call):
    """(seconds, result) of ``call()``, every device of ``model`` synchronized before and after."""
    used = devices.run_devices(model)
    devices.synchronize(used)
    t0 = time.perf_counter()
    out = call()
    devices.synchronize(used)
    return time.perf_counter() - t0, out


class _StepClock:
    """A logits processor that notes the time of each call (one per generated token)."""

    def __init__(self, model):
        self.used, self.times = devices.run_devices(model), []

    def __call__(self, input_ids, scores):
        devices.synchronize(self.used)
        self.times.append(time.perf_counter())
        return scores


def time_generate(model, ids: list[int], new_tokens: int, static: bool = False) -> tuple[float, float, list[int]]:
    """(whole call s, median decode step s, new token ids) of greedy ``generate`` with the full cache: dynamic,
    or ``static`` (transformers' static cache, whose decode step torch compiles on CUDA: the
    fastest path transformers offers, and the bar kvviz is measured against)."""
    from transformers import LogitsProcessorList

    clock = _StepClock(model)
    x = torch.tensor([ids], device=devices.input_device(model))
    cache = {"cache_implementation": "static"} if static else {}
    call, out = timed(model, lambda: model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        do_sample=False, logits_processor=LogitsProcessorList([clock]), pad_token_id=0, **cache,
    ))
    steps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    return call, statistics.median(steps) if steps else float("nan"), out[0, len(ids):].tolist()


def leading_agreement(a: list[int], b: list[int]) -> int:
    """How many leading tokens of ``a`` and ``b`` are equal."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def decode_path(timings: dict) -> str:
    """How a run decoded, for the table: "graph" or "eager", then ", fused" when every block call was
    fused and ", fused steps" when every steady policy step was (``kvviz.runtime.fused_steps``)."""
    path = str(timings.get("decode_path", "eager"))
    return path + (", fused" if timings.get("fused") == "all" else "") + (", fused steps" if timings.get("fused_steps") == "all" else "")


def time_policy(model, tokenizer, ids: list[int], spec: PolicySpec, new_tokens: int, graphs: bool):
    """(whole call s, trace) of one kvviz run decoding ``new_tokens`` greedily, EOS ignored."""
    options = DecodeOptions(max_new_tokens=new_tokens, stop_at_eos=False, cuda_graphs=graphs)
    return timed(model, lambda: engine.run(model, tokenizer, ids, spec, options))


def time_live(model, tokenizer, ids: list[int], spec: PolicySpec, new_tokens: int, graphs: bool) -> float:
    """The Live page's whole run: the policy, the full cache and the policy teacher-forced on it."""
    options = DecodeOptions(max_new_tokens=new_tokens, stop_at_eos=False, cuda_graphs=graphs, capture_queries=True)
    return timed(model, lambda: comparison.against_full(model, tokenizer, ids, spec, options))[0]


def run_bench(loaded, specs: list[PolicySpec], prompt_tokens: int, new_tokens: int, repeats: int = 3,
              graphs: bool = True, live: bool = False, progress=print) -> BenchResult:
    """Time each baseline, then every policy, then each baseline again (a busy host shows as drift)."""
    import transformers

    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    ids = prompt_ids(tok, prompt_tokens)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = bandwidth(card)
    result = BenchResult(card, str(model.dtype).removeprefix("torch."), torch.__version__, transformers.__version__, commit(),
                         loaded.summary.name, len(ids), new_tokens, repeats, bw, weight_bytes)
    kv_full = len(ids) + new_tokens - 1  # entries the last step reads (before its own token)
    full_floor = floor_ms(weight_bytes, engine.ModelShape.of(model).full_bytes_per_token * kv_full, bw)
    baselines = {"transformers generate": False}
    if device.type == "cuda" and not devices.is_split(devices.layer_devices(model)):
        baselines["transformers generate, static cache (compiled)"] = True

    time_generate(model, ids[:64], 4)  # warm-up
    reference: list[int] = []  # dynamic generate's tokens: what every full-cache row should produce
    for name, static in baselines.items():
        if static:
            t0 = time.perf_counter()
            time_generate(model, ids, new_tokens, static=True)  # warm-up: torch compiles the step here
            progress(f"generate, static cache: compiled in {time.perf_counter() - t0:.1f} s (first call)")
        runs = [time_generate(model, ids, new_tokens, static=static) for _ in range(repeats)]
        reference = reference or runs[0][2]
        result.baseline_ms[name] = [1e3 * statistics.median(r[1] for r in runs)]
        result.rows.append(BenchRow(name, "", result.baseline_ms[name][0], statistics.median(r[0] for r in runs),
                                    decode_path="compiled" if static else "", floor_ms=full_floor,
                                    agree_tokens=leading_agreement(runs[0][2], reference)))
        progress(f"{name}: {result.baseline_ms[name][0]:.2f} ms/step")

    if device.type == "cuda":  # the fused blocks (kvviz.runtime.fused) are built before any row is timed
        t0 = time.perf_counter()
        time_policy(model, tok, ids[:256], PolicySpec.of("h2o").with_budget(max(1, len(ids[:256]) // 4)), 8, graphs)
        fused.wait()
        result.fused_build_s = time.perf_counter() - t0
        progress(f"fused blocks: {fused.blocks_of(model).state()} after {result.fused_build_s:.1f} s")
    for spec in specs:
        time_policy(model, tok, ids[:256], spec.with_budget(min(spec.budget, 128)) if spec.budget else spec, 8, graphs)
        t0 = time.perf_counter()
        if device.type == "cuda":  # the policy's fused steps (kvviz.runtime.fused_steps) for these shapes, built before timing
            time_policy(model, tok, ids, spec, new_tokens, graphs)
            if live:
                time_live(model, tok, ids, spec, new_tokens, graphs)
            fused.wait()
        runs = [time_policy(model, tok, ids, spec, new_tokens, graphs) for _ in range(repeats)]
        trace = runs[-1][1]
        step = statistics.median(statistics.median(t.timings["step_s"][1:] or t.timings["step_s"]) for _, t in runs)
        row = BenchRow(
            spec.label(), spec.to_text(), 1e3 * step, statistics.median(c for c, _ in runs),
            prefill_ms=1e3 * statistics.median(t.timings["prefill_s"] for _, t in runs),
            decode_path=decode_path(trace.timings),
            kv_bytes=int(trace.kv_bytes[-1]), kv_bytes_full=int(trace.kv_bytes_full[-1]),
            floor_ms=floor_ms(weight_bytes, int(trace.kv_bytes[-1]), bw),
            graph_failure=trace.timings.get("graph_failure"),
            warmup_s=time.perf_counter() - t0 - sum(c for c, _ in runs) if device.type == "cuda" else None,
            fused_steps=str(trace.timings.get("fused_steps")),
        )
        if spec.to_text() == "full":
            row.agree_tokens = leading_agreement([int(t) for t in trace.generated_ids], reference)
        if live:
            row.live_s = time_live(model, tok, ids, spec, new_tokens, graphs)
        result.rows.append(row)
        progress(f"{row.config}: {row.step_ms:.2f} ms/step ({row.decode_path})")

    for name, static in baselines.items():
        runs = [time_generate(model, ids, new_tokens, static=static) for _ in range(repeats)]
        result.baseline_ms[name].append(1e3 * statistics.median(r[1] for r in runs))
        before, after = result.baseline_ms[name]
        progress(f"{name} again: {after:.2f} ms/step (before the kvviz rows: {before:.2f})")
        if warning := drift_warning(name, before, after):
            result.warnings.append(warning)
    base = {name: min(v) for name, v in result.baseline_ms.items()}
    static_name = "transformers generate, static cache (compiled)"
    for row in result.rows:
        if row.config in base:  # a baseline row shows its faster timing
            row.step_ms = base[row.config]
        row.speedup = base["transformers generate"] / row.step_ms
        row.speedup_static = base[static_name] / row.step_ms if static_name in base else None
    return result


def table(result: BenchResult) -> str:
    """The side-by-side table, as the CLI prints it and PERFORMANCE.md holds it (Markdown)."""
    from kvviz.record.metrics import format_bytes

    live = any(r.live_s is not None for r in result.rows)
    static = any(r.speedup_static is not None for r in result.rows)
    agree = any(r.agree_tokens is not None for r in result.rows)
    head = ["configuration", "decode", "ms/step", "× generate"] + (["× static"] if static else []) + ["whole call s", "prefill ms", "KV held", "floor ms", "× floor"] + (["= generate"] if agree else [])
    if live:
        head.insert(head.index("prefill ms"), "Live run s")
    lines = [
        f"{result.card} · {result.model} · {result.dtype} · prompt {result.prompt_tokens} tokens + {result.new_tokens} new"
        f" · median of {result.repeats} · torch {result.torch}, transformers {result.transformers}, commit {result.commit}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in result.rows:
        cells = [
            r.config, r.decode_path or "eager", f"{r.step_ms:.2f}", f"{r.speedup:.2f}" if r.speedup else "",
            *([_num(r.speedup_static, "{:.2f}")] if static else []), f"{r.call_s:.2f}", _num(r.prefill_ms, "{:.1f}"), format_bytes(r.kv_bytes) if r.kv_bytes is not None else "",
            _num(r.floor_ms, "{:.3f}"), _num(r.step_ms / r.floor_ms if r.floor_ms else None, "{:.0f}"),
            *([_num(r.agree_tokens, "{}/" + str(result.new_tokens))] if agree else []),
        ]
        if live:
            cells.insert(head.index("Live run s"), _num(r.live_s, "{:.2f}"))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r.config}: graph capture failed ({r.graph_failure}); decoded eagerly" for r in result.rows if r.graph_failure]
    notes += [f"- {name}: {', '.join(f'{v:.2f}' for v in times)} ms/step before and after the kvviz rows" for name, times in result.baseline_ms.items()]
    notes += [f"- Warning: {w}" for w in result.warnings]
    if result.baseline_ms:
        notes.append("- `× generate` and `× static` divide the faster of each baseline's two timings by the row's step.")
    if agree:
        notes.append("- `= generate`: how many leading greedy tokens equal dynamic `generate`'s (full-cache rows).")
    return "\n".join(lines + ([""] + notes if notes else []))


def _num(value, fmt: str) -> str:
    return "" if value is None else fmt.format(value)
