"""Every chart of a page at the largest values the page's widgets allow: seconds to build each figure.

    python benchmarks/widget_maxima.py [--page paged] [--limit 1.0] [--json results.json]

A chart a visitor can ask for must not stall the server: each should build in under ``--limit``
seconds (default 1) on a small CPU; the command exits 1 when one does not. The limits are read
from the code that draws the widgets (``kvviz.paged.run.FORM_LIMITS`` for the Paged cache page),
not copied here, so raising a limit there is measured here.

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
            f"limit; the runs behind them took up to {runs:.0f} s (not chart time).")


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
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "limit_s": args.limit,
            "slowest_s": max(r["chart_s"] for r in rows), "rows": rows,
        }, indent=1))
    print(f"{len(rows)} charts, {slow} over {args.limit} s", file=sys.stderr)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
