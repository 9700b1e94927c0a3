"""Every chart of a page at the largest values the page's widgets allow: seconds to build each figure.

    python benchmarks/widget_maxima.py [--page paged] [--limit 1.0] [--json results.json]

A chart a visitor can ask for must not stall the server: each should build in under ``--limit``
seconds (default 1) on a small CPU; the command exits 1 when one does not. The limits are read
from the code that draws the widgets (``kvviz.paged.run.FORM_LIMITS`` for the Paged cache page,
``kvviz.live.run.MAX_NEW_TOKENS``, ``kvviz.ui.compare_view.MAX_NEW_TOKENS``, the attention panels'
``RESOLUTIONS``, ``kvviz.quant_lab.run.MAX_TOKENS``/``RESIDUALS``/``MAX_NEW_TOKENS``, the dedup
page's ``MAX_PROMPT_TOKENS``/``MIN_SPAN``/``MAX_COMPARED``, the operator's ``max_sweep_runs``), not
copied here, so raising a limit there is measured here. ``--page`` with ``--json`` re-measures
those pages and keeps the file's others (``measured`` says when each page was).

The runs behind the charts are real: the scheduler decodes with a tiny random-weight Llama (the
chart time depends on the sizes, not on the weights) and a byte tokenizer (one token per
character). Only the time to build the figures is reported as chart time; the run's own time is
shown beside it.

Adding a page: write a function that yields ``Case``s and decorate it with ``@page("name")``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's kvviz, not an installed one

PAGES: dict[str, Callable[[], Iterator["Case"]]] = {}


@dataclass
class Case:
    chart: str  # the builder's name
    setting: str  # the widget values it runs at
    build: Callable[[], object]  # returns the figure (or text)
    run_s: float = 0.0  # the run that produced its data


def page(name: str):
    def register(cases: Callable[[], Iterator[Case]]):
        PAGES[name] = cases
        return cases
    return register


# -- the Paged cache page ---------------------------------------------------------------------------


class ByteTokenizer:
    """One token per character (mod the vocabulary): no download, lengths under control."""

    eos_token_id = None

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __call__(self, text: str):
        return type("Encoded", (), {"input_ids": [1 + ord(c) % (self.vocab - 1) for c in text]})()

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(chr(32 + i % 90) for i in ids)


def tiny_llama(max_context: int = 8192):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=max_context, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def full_pool_frame(n_blocks: int, block_size: int, requests: int) -> dict:
    """The worst a frame can be for the pool chart: every block used, every slot written, every
    other block shared by two requests."""
    owners = [[f"r{b % requests}"] + ([f"r{(b + 1) % requests}"] if b % 2 else []) for b in range(n_blocks)]
    tables: dict[str, list[int]] = {f"r{k}": [] for k in range(requests)}
    for b, who in enumerate(owners):
        for rid in who:
            tables[rid].append(b)
    return {
        "step": 1, "events": [],
        "pool": {"state": ["used"] * n_blocks, "ref_count": [len(o) for o in owners], "filled": [block_size] * n_blocks,
                 "owners": owners, "hash": [None] * n_blocks, "tables": tables},
        "live": [[0.5] * block_size for _ in range(n_blocks)], "held_tokens": n_blocks * block_size / 2,
        "reserved_slots": n_blocks * block_size,
    }


@page("paged")
def paged_cases() -> Iterator[Case]:
    from kvviz.charts import paged as charts
    from kvviz.paged.run import FORM_LIMITS, PagedSettings, run_paged
    from kvviz.policies.spec import PolicySpec

    most = {k: hi for k, (_, hi, _) in FORM_LIMITS.items()}
    least = {k: lo for k, (lo, _, _) in FORM_LIMITS.items()}
    model, tokenizer = tiny_llama(), ByteTokenizer(128)
    prompts = [f"Request {i}: " + "the quick brown fox jumps over the lazy dog " * 9 for i in range(4)]
    runs = [
        (least["block_size"], None),  # one-slot blocks: the most blocks drawn slot by slot
        (least["block_size"], "h2o:ratio=0.5"),  # with holes: partial slots, the evictor's live shares
        (most["block_size"], None),  # the largest blocks
    ]
    for block_size, policy in runs:
        settings = PagedSettings(
            block_size=block_size, num_blocks=most["num_blocks"], n=most["n"], max_new_tokens=most["max_new_tokens"],
            sample=True, seed=most["seed"], policy=PolicySpec.parse(policy) if policy else None,
        )
        t0 = time.perf_counter()
        run = run_paged(model, tokenizer, prompts, settings, model_name="tiny random Llama")
        run_s = time.perf_counter() - t0
        busiest = max(run.frames, key=lambda f: sum(s == "used" for s in f["pool"]["state"]))
        eventful = max(run.frames, key=lambda f: len(f["events"]))
        colors = charts.request_colors([r["id"] for r in run.requests])
        budget = int(max(64.0, 4 * run.pool_bytes / 2**20) * 2**20)  # the page's budget slider at its most
        waste = run.waste_for(budget)
        used = sum(s == "used" for s in busiest["pool"]["state"])
        setting = (f"{run.num_blocks} blocks of {block_size}, {len(run.requests)} requests (n={settings.n}), "
                   f"{settings.max_new_tokens} new tokens, {policy or 'full'}")
        yield Case("pool_grid", f"{setting}; step {busiest['step']}, {used} blocks used",
                   lambda f=busiest, bs=block_size, c=colors: charts.pool_grid(f, bs, c), run_s)
        yield Case("block_tables", setting, lambda f=busiest, c=colors: charts.block_tables(f, c), run_s)
        yield Case("usage_over_steps", f"{setting}; {len(run.frames)} steps, {run.preemptions} preemptions",
                   lambda r=run, f=busiest: charts.usage_over_steps(r.frames, f["step"]), run_s)
        yield Case("event_lines", f"{setting}; {len(eventful['events'])} events in a step", lambda f=eventful: charts.event_lines(f), run_s)
        yield Case("waste_bars", setting, lambda w=waste: charts.waste_bars(w), run_s)
        yield Case("fits_bars", setting, lambda w=waste: charts.fits_bars(w), run_s)
    for block_size in (least["block_size"], most["block_size"]):
        frame = full_pool_frame(most["num_blocks"], block_size, requests=64)
        colors = charts.request_colors(list(frame["pool"]["tables"]))
        setting = f"{most['num_blocks']} blocks of {block_size}, all used, half shared, 64 requests (made by hand)"
        yield Case("pool_grid", setting, lambda f=frame, bs=block_size, c=colors: charts.pool_grid(f, bs, c))
        yield Case("block_tables", setting, lambda f=frame, c=colors: charts.block_tables(f, c))


# -- the Memory calculator page ----------------------------------------------------------------------


@page("calculator")
def calculator_cases() -> Iterator[Case]:
    """Every bundled architecture x every cache dtype (the multiselects at their most), the context
    select slider and the batch slider at their tops, a GPU chosen (its room drawn per curve)."""
    from dataclasses import replace

    from kvviz.calculator import memory as calc
    from kvviz.charts import calculator as charts
    from kvviz.ui.calculator_controls import CONTEXTS

    archs, dtypes = list(calc.bundled().values()), list(calc.CACHE_DTYPES)
    scenario = calc.Scenario(context=CONTEXTS[-1], batch=256)
    setting = f"{len(archs)} architectures x {len(dtypes)} cache dtypes, context {CONTEXTS[-1]:,}, batch 256, h100"

    def memory_chart():
        estimates, _ = calc.estimate_many(archs, scenario, dtypes, gpu="h100")
        contexts = charts.context_axis(max(scenario.context * 4, 32768))
        curves = [charts.Curve(e.display, e.dtype, contexts, calc.memory_curve(a, replace(scenario, dtype=e.dtype), contexts))
                  for a in archs for e in estimates if e.arch == a.name]
        return charts.memory_figure(curves, {e.display: e.kv_budget_bytes for e in estimates}, scenario.context, estimates[0].gpu, scenario.batch)

    yield Case("memory_figure", setting + " (the estimates and curves included)", memory_chart)


# -- the pages that run the model -------------------------------------------------------------------
# Their charts are sized by the run: the prompt (up to the model's context), the new tokens (each
# page's cap), the layers and heads. The runs use a random Llama shaped like SmolLM2-135M (30
# layers, 9 query heads over 3 KV heads, an 8,192-token context) with narrow heads: the charts see
# the same counts, the run is cheaper.

SMOL_SHAPE = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192}


def smol_shaped():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=72, intermediate_size=128, head_dim=8, attn_implementation="sdpa", **SMOL_SHAPE)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def text_of(n: int) -> str:
    return ("the quick brown fox jumps over the lazy dog; " * (n // 40 + 1))[:n]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@page("live")
def live_cases() -> Iterator[Case]:
    """A prompt filling the context but for the slider's most new tokens, a lossy evicting store
    (every tab drawn, the reconstruction error's too), compared with the full cache; a search for
    the prompt's commonest token, whose matches (the search's most) pass the rings a map draws."""
    from collections import Counter

    from kvviz.charts import against_full as compare_charts
    from kvviz.charts import memory as memory_charts
    from kvviz.charts import retention as retention_charts
    from kvviz.charts.retention import MAX_RINGS, ring_runs
    from kvviz.charts.token_map import token_states_figure
    from kvviz.live.run import MAX_NEW_TOKENS
    from kvviz.record.text import match_positions, token_texts
    from kvviz.record.token_states import Scope, token_records
    from kvviz.runtime import comparison
    from kvviz.ui import token_html, token_window

    model, tokenizer = smol_shaped(), ByteTokenizer(128)
    context = SMOL_SHAPE["max_position_embeddings"]
    ids = tokenizer(text_of(context - MAX_NEW_TOKENS)).input_ids
    spec = "h2o+kivi:ratio=0.5"
    # a search for the prompt's commonest token (random weights may write one blank token over and
    # over, which a search strips to nothing), past MAX_RINGS matches so that the rings merge
    prompt_texts = token_texts(tokenizer, ids)
    common = Counter(t for t in prompt_texts if t.strip()).most_common(1)[0][0]
    if len(match_positions(prompt_texts, common)) <= MAX_RINGS:
        raise SystemExit(f"a search for {common!r} rings too few tokens to pass {MAX_RINGS}: the merge would not be exercised")
    cmp, run_s = timed(lambda: comparison.against_full(model, tokenizer, ids, spec, max_new_tokens=MAX_NEW_TOKENS, model_name="tiny"))
    trace, full, forced = cmp.policy, cmp.full, cmp.forced
    step, n_pos = trace.n_steps - 1, trace.n_positions
    marked = sorted(set(match_positions(trace.tokens, common)))
    setting = f"{len(ids):,}-token prompt + {MAX_NEW_TOKENS} new tokens, {spec}, {trace.n_layers} layers x {trace.n_kv_heads} KV heads, step {step}"
    for scope in (Scope(), Scope(layer=trace.n_layers - 1, head=0)):
        where = f"{setting}, {scope.label()}, {len(marked):,} tokens ringed ({len(ring_runs(marked)[0])} rings drawn)"

        def tokens_view(s=scope):
            records, _ = token_window.window(token_records(trace, step, s), 0)
            return token_html.legend_html() + token_html.tokens_html(records, step, marked=marked)

        yield Case("tokens_html", where + f" (the newest {token_window.WINDOW:,} of {n_pos:,})", tokens_view, run_s)
        yield Case("token_states_figure", where, lambda s=scope: token_states_figure(token_records(trace, step, s), step, marked=marked), run_s)
        yield Case("retention_steps_figure", where, lambda s=scope: retention_charts.retention_steps_figure(trace, s, step, marked=marked), run_s)
    yield Case("retention_layers_figure", setting, lambda: retention_charts.retention_layers_figure(trace, step, None, marked=marked), run_s)
    yield Case("occupancy_figure", setting, lambda: retention_charts.occupancy_figure(trace, step), run_s)
    pl = trace.prompt_len
    yield Case("comparison_html", setting, lambda: token_html.comparison_html(full.tokens[pl:], trace.tokens[pl:], cmp.first_divergence, trace.policy), run_s)
    yield Case("output_comparison_figure", setting, lambda: compare_charts.output_comparison_figure(full, trace), run_s)
    yield Case("agreement_figure", setting, lambda: compare_charts.agreement_figure(forced, full, cmp.first_divergence), run_s)
    yield Case("kv_bytes_figure", setting, lambda: memory_charts.kv_bytes_figure(trace, step), run_s)
    yield Case("quant_error_figure", setting, lambda: memory_charts.quant_error_figure(trace), run_s)
    yield Case("residual_window_figure", setting, lambda: memory_charts.residual_window_figure(trace), run_s)


@page("attention")
def attention_cases() -> Iterator[Case]:
    """The whole context: a prompt leaving room for the most new tokens the page allows (64), a
    policy (its evictions greyed), the finest detail resolution over the whole sequence."""
    import numpy as np

    from kvviz.attention import maps as attention_maps
    from kvviz.charts import attention_detail as detail_charts
    from kvviz.charts import attention_overview as overview_charts
    from kvviz.runtime import engine
    from kvviz.ui import attention_memo as memo
    from kvviz.ui.attention_panels import RESOLUTIONS
    from kvviz.ui.token_html import attention_tokens_html

    model, tokenizer = smol_shaped(), ByteTokenizer(128)
    context, new = SMOL_SHAPE["max_position_embeddings"], 64  # the page's room: min(64, context - prompt)
    ids = tokenizer(text_of(context - new)).input_ids
    trace, gen_s = timed(lambda: engine.run(model, tokenizer, ids, "h2o:ratio=0.5", max_new_tokens=new, model_name="tiny", capture_queries=True))
    all_ids, tokens, prompt_len, n = trace.all_ids, trace.tokens, len(ids), len(trace.all_ids)
    ov, ov_s = timed(lambda: attention_maps.overview(
        model, all_ids, cells=memo.THUMB_CELLS, pool="max", sink_tokens=memo.SINK_TOKENS, local_tokens=memo.LOCAL_TOKENS,
        prompt_len=prompt_len, keep_qk_bytes=memo.KEEP_QK_BYTES))
    layer, head, token, cells = ov.n_layers - 1, ov.n_q_heads - 1, n - 1, RESOLUTIONS[-1]
    qk = ov.qk[layer] if layer in ov.qk else memo.capture.capture_layers(model, all_ids, [layer], prompt_len=prompt_len)[layer]
    kv_head = qk.kv_head(head)
    evicted = (trace.entered_at_step() <= trace.n_steps - 1) & ~trace.kept_mask(trace.n_steps - 1, layer, kv_head)
    detail, view_s = timed(lambda: attention_maps.attention_view(qk, head, q_range=(0, n), k_range=(0, n), max_cells=cells, pool="max",
                                                                  evicted=evicted, prompt_len=prompt_len))
    run_s = gen_s + ov_s + view_s
    setting = f"{n:,} tokens ({prompt_len:,} prompt + {new} new, h2o:ratio=0.5), {ov.n_layers} layers x {ov.n_q_heads} heads"
    yield Case("overview_figure", setting, lambda: overview_charts.overview_figure(ov, selected=(layer, head), scale="log"), run_s)
    for scale in ("log", "linear"):
        yield Case("detail_figure", f"{setting}, whole sequence at {cells} tiles, {scale}, {int(evicted.sum()):,} keys evicted",
                   lambda s=scale: detail_charts.detail_figure(detail, tokens, selected_token=token, scale=s), run_s)
    yield Case("view_csv", f"{setting}, {cells} tiles", lambda: detail_charts.view_csv(detail, tokens), run_s)
    row = attention_maps.attention_rows(qk, head, [token])[0]
    yield Case("attention_tokens_html", setting + ", 240 tokens before the selected one",
               lambda: attention_tokens_html(tokens, prompt_len=prompt_len, weights=row, selected=token, evicted=evicted, start=max(0, token - 240), stop=token + 40), run_s)
    lost = np.asarray(trace.lost_mass, dtype=np.float64)[:, layer]
    yield Case("lost_mass_figure", setting, lambda: detail_charts.lost_mass_figure(lost, trace.n_steps - 1), run_s)
    for color_by in ("layer", "entropy"):
        yield Case("profile_figure", f"{setting}, coloured by {color_by}",
                   lambda c=color_by: overview_charts.profile_figure(ov.profiles, selected=(layer, head), color_by=c), run_s)
    yield Case("profiles_frame", setting, lambda: overview_charts.profiles_frame(ov.profiles), run_s)


@page("compare")
def compare_cases() -> Iterator[Case]:
    """Four policies (the most columns), the slider's most new tokens, a prompt filling the context."""
    from kvviz.charts import compare as charts
    from kvviz.compare.run import MAX_POLICIES, compare
    from kvviz.policies.spec import PolicySpec
    from kvviz.runs.bundle import RunSettings
    from kvviz.ui import compare_view as view

    model, tokenizer = smol_shaped(), ByteTokenizer(128)
    new = view.MAX_NEW_TOKENS
    text = text_of(SMOL_SHAPE["max_position_embeddings"] - new)
    specs = [PolicySpec.parse(s) for s in ("h2o:ratio=0.5", "streaming_llm:ratio=0.25", "snapkv:ratio=0.25", "h2o+kivi:ratio=0.5")][:MAX_POLICIES]
    settings = RunSettings(model="tiny", prompt_name="Custom", prompt_text=text, chat=False, policies=specs, max_new_tokens=new)
    result, run_s = timed(lambda: compare(model, tokenizer, tokenizer(text).input_ids, settings, model_name="tiny"))
    step = result.n_steps - 1
    setting = f"{len(specs)} policies, {result.full.prompt_len:,}-token prompt + {new} new tokens, step {step}"
    yield Case("outputs_html", setting, lambda: view.outputs_html(result), run_s)
    yield Case("memory_figure", setting, lambda: charts.memory_figure(result, step), run_s)
    yield Case("agreement_figure", setting, lambda: charts.agreement_figure(result, step), run_s)
    yield Case("report", setting + " (charts and tables, to HTML)", lambda: charts.report(result, step).to_html(), run_s)


@page("tradeoffs")
def tradeoffs_cases() -> Iterator[Case]:
    """The most runs a sweep may have (the operator's default limit), as rows made by hand: the
    charts' size is the number of rows and series."""
    from kvviz.charts import sweep as charts
    from kvviz.runtime.settings import Limits
    from kvviz.sweep.rows import SweepRow

    runs = Limits().max_sweep_runs
    full = 1_000_000
    policies = ["h2o", "streaming_llm", "snapkv", "tova", "h2o+kivi", "quant", "kivi", "random"]
    ppl = [SweepRow("ppl", policies[i % 8], "", r, None, int(full * r), int(full * r), full, 1.0, ppl=10 + 5 * (1 - r) + i % 8,
                    kl_full=0.1 * (1 - r), top1_agree=r, prompt_tokens=8192).to_dict()
           for i in range(runs) for r in [((i // 8) + 1) / (runs // 8 + 1)]]
    ppl.append(SweepRow("ppl", "full", "", None, None, full, full, full, 1.0, ppl=10, kl_full=0, top1_agree=1, prompt_tokens=8192).to_dict())
    setting = f"{runs} runs ({len(policies)} series x {runs // 8} budgets) and the full cache"
    for metric in charts.METRICS:
        for memory in ("pct", "bytes"):
            yield Case("pareto_figure", f"{setting}, {metric} against {memory}, all chosen",
                       lambda m=metric, mem=memory: charts.pareto_figure(ppl, m, mem, ppl[-1], selected=list(range(len(ppl)))))
    passkey = [SweepRow("passkey", policies[i % 8], "", 0.5, None, full // 2, full // 2, full, 1.0, depth=(i // 8) / 8,
                        length=1000 * (1 + i % 8), found=bool(i % 3), answer="12345", prompt_tokens=8000).to_dict() for i in range(runs)]
    yield Case("passkey_figure", f"{runs} passkey runs", lambda: charts.passkey_figure(passkey))
    result = {"settings": {"task": "ppl"}, "rows": ppl}
    yield Case("sweep_report", setting + " (to HTML)", lambda: charts.sweep_report(result).to_html())


@page("quant_lab")
def quant_lab_cases() -> Iterator[Case]:
    """The most prompt tokens the lab reads, the widest residual window, the most new tokens."""
    from kvviz.charts import quant_lab as charts
    from kvviz.quant_lab import run as lab

    model, tokenizer = smol_shaped(), ByteTokenizer(128)
    ids = tokenizer(text_of(lab.MAX_TOKENS)).input_ids
    layer, head, residual, new = SMOL_SHAPE["num_hidden_layers"] - 1, 0, lab.RESIDUALS[-1], lab.MAX_NEW_TOKENS
    lc, read_s = timed(lambda: lab.read_layer(model, ids, layer))
    (m, results), grid_s = timed(lambda: lab.error_grid(lc))
    nxt, next_s = timed(lambda: lab.next_token_kl(model, tokenizer, ids, lab.next_token_schemes(residual), new_tokens=new))
    run_s = read_s + grid_s + next_s
    stats = lab.channel_stats(lc, head)
    setting = f"{len(ids):,} tokens, layer {layer}, KV head {head}, residual {residual}, {new} new tokens"
    yield Case("magnitude_figure", setting, lambda: charts.magnitude_figure(stats, layer, head), run_s)
    yield Case("token_profile_figure", setting, lambda: charts.token_profile_figure(stats), run_s)
    yield Case("error_grid_figure", setting + f", {len(results)} schemes over {m} tokens", lambda: charts.error_grid_figure([r.row() for r in results]), run_s)
    yield Case("next_token_figure", setting, lambda: charts.next_token_figure([r.row() for r in nxt], nxt[0].kv_bytes_full), run_s)
    scheme = lab.Scheme("kivi", 2, 32, residual)
    errors = lab.token_errors(lc, head, scheme)
    yield Case("residual_window_figure", setting, lambda: charts.residual_window_figure(*errors, residual), run_s)


@page("dedup")
def dedup_cases() -> Iterator[Case]:
    """The longest prompt the page takes, its shortest span (the most spans), the most next tokens."""
    from kvviz.charts import dedup as charts
    from kvviz.dedup import run as dedup

    model, tokenizer = smol_shaped(), ByteTokenizer(128)
    question = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # characters the passage has not: no repeat at the end
    ids = tokenizer(text_of(dedup.MAX_PROMPT_TOKENS - len(question)) + question).input_ids
    run, run_s = timed(lambda: dedup.run_dedup(model, ids, min_len=dedup.MIN_SPAN[0], new_tokens=dedup.MAX_COMPARED))
    result = run.summary(tokenizer)
    setting = f"{len(ids)} tokens, spans of {dedup.MIN_SPAN[0]}+ tokens ({len(result['spans'])}), {dedup.MAX_COMPARED} next tokens"
    yield Case("deviation_figure", setting, lambda: charts.deviation_figure(result["key_deviation"], result["value_deviation"]), run_s)
    yield Case("recompute_figure", setting, lambda: charts.recompute_figure(result["recompute"], result["full_bytes"]), run_s)


# -- measuring --------------------------------------------------------------------------------------


def measure(case: Case, repeats: int = 2) -> dict:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = case.build()
        best = min(best, time.perf_counter() - t0)
    layout = getattr(result, "layout", None)
    return {
        "chart": case.chart, "setting": case.setting, "chart_s": round(best, 4), "run_s": round(case.run_s, 2),
        "traces": len(result.data) if hasattr(result, "data") else None,
        "shapes": len(layout.shapes) + len(layout.annotations) if layout is not None else None,
    }


RESULTS = Path(__file__).resolve().parent / "results" / "widget_maxima_cpu.json"
SUMMARY_MARK = "<!-- widget_maxima: rendered from benchmarks/results/widget_maxima_cpu.json -->"


def summary(results: dict) -> str:
    """The sentence docs/PERFORMANCE.md carries under SUMMARY_MARK (a test re-renders it)."""
    rows = results["rows"]
    slowest = max(rows, key=lambda r: r["chart_s"])
    pages = sorted({r["page"] for r in rows})
    runs = max(r["run_s"] for r in rows)
    return (f"{results['date']}, {results['machine']} (`{results['command']}`): {len(rows)} charts of "
            f"{', '.join(pages)} at the widgets' maxima, the slowest {slowest['chart']} in {slowest['chart_s']:.3f} s "
            f"({slowest['setting']}), {sum(r['chart_s'] > results['limit_s'] for r in rows)} over the {results['limit_s']:g} s "
            f"limit; the runs behind them took up to {runs:.0f} s (not chart time)." + _when(results.get("measured", {})))


def _when(measured: dict) -> str:
    """Pages measured by separate invocations (``--page``): when each was."""
    if len(set(measured.values())) <= 1:
        return ""
    return " Pages measured in separate runs: " + "; ".join(f"{p} {d}" for p, d in measured.items()) + "."


def machine() -> str:
    import os
    import platform
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--page", choices=sorted(PAGES), action="append", help="pages to measure (default: all)")
    p.add_argument("--limit", type=float, default=1.0, help="seconds a chart may take (exit 1 above)")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args()
    rows, slow = [], 0
    for name in args.page or sorted(PAGES):
        for case in PAGES[name]():
            row = {"page": name} | measure(case)
            rows.append(row)
            over = row["chart_s"] > args.limit
            slow += over
            print(f"{name:6} {row['chart']:17} {row['chart_s']:7.3f} s {'OVER ' if over else ''}"
                  f"(traces {row['traces']}, shapes {row['shapes']}, run {row['run_s']:.1f} s)  {row['setting']}", flush=True)
    if args.json:  # with when, where and how it was measured (docs/PERFORMANCE.md cites the file)
        now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        measured = {name: now for name in {r["page"] for r in rows}}
        if args.page and args.json.exists():  # some pages measured again: the file's other pages are kept, with their dates
            old = json.loads(args.json.read_text())
            kept = [r for r in old["rows"] if r["page"] not in measured]
            measured = {p: old.get("measured", {}).get(p, old["date"]) for p in {r["page"] for r in kept}} | measured
            rows = sorted(kept + rows, key=lambda r: r["page"])
        args.json.write_text(json.dumps({
            "date": now, "machine": machine(),
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "limit_s": args.limit,
            "slowest_s": max(r["chart_s"] for r in rows), "measured": dict(sorted(measured.items())), "rows": rows,
        }, indent=1))
    print(f"{len(rows)} charts, {slow} over {args.limit} s", file=sys.stderr)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
