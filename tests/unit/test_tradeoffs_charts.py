"""The Tradeoffs figures read their data from the rows: points equal the rows, one line per
policy in its own colour, the full cache a star in its colour; passkey heatmaps hold found/missed
where the rows say; the best policy within a memory limit by hand."""

from __future__ import annotations

import math

import pytest

from kvviz.charts import sweep as tradeoffs
from kvviz.charts.style import COLORS, SERIES
from kvviz.sweep.rows import SweepRow, rows_csv

MiB = 1024 * 1024
FULL_BYTES = 8 * MiB


def ppl_row(policy, params="", ratio=None, kv=FULL_BYTES, ppl=20.0, kl=0.0, top1=1.0, budget=None):
    return SweepRow("ppl", policy, params, ratio, budget, kv, kv, FULL_BYTES, 1.0, ppl, kl, top1).to_dict()


ROWS = [
    ppl_row("full"),
    ppl_row("window", ratio=0.5, kv=4 * MiB, ppl=60.0, kl=0.9, top1=0.6, budget=64),
    ppl_row("window", ratio=0.25, kv=2 * MiB, ppl=300.0, kl=2.0, top1=0.3, budget=32),
    ppl_row("streaming_llm", ratio=0.25, kv=2 * MiB, ppl=22.0, kl=0.2, top1=0.8, budget=32),
    ppl_row("streaming_llm", ratio=0.5, kv=4 * MiB, ppl=21.0, kl=0.1, top1=0.9, budget=64),
    ppl_row("quant", "bits=2", kv=1 * MiB, ppl=40.0, kl=0.5, top1=0.7),
]


def test_pareto_points_equal_the_rows_one_line_per_policy():
    fig = tradeoffs.pareto_figure(ROWS, "ppl", "pct")
    names = [t.name for t in fig.data]
    assert names == ["window", "streaming_llm", "quant:bits=2", "full cache"]
    window, sinks, quant, full = fig.data
    assert list(window.x) == [25.0, 50.0] and list(window.y) == [300.0, 60.0]  # sorted by memory
    assert list(sinks.x) == [25.0, 50.0] and list(sinks.y) == [22.0, 21.0]
    assert window.mode == "lines+markers" and quant.mode == "markers" and list(quant.x) == [12.5]
    assert [window.line.color, sinks.line.color, quant.line.color] == SERIES[:3]
    assert full.marker.color == COLORS["full"] and full.marker.symbol == "star" and list(full.x) == [100.0] and list(full.y) == [20.0]
    hlines = [s for s in fig.layout.shapes if s.y0 == s.y1]
    assert len(hlines) == 1 and hlines[0].y0 == 20.0 and hlines[0].line.dash == "dash"
    assert fig.layout.yaxis.type == "log" and "lower left" in fig.layout.title.text


def test_pareto_in_bytes_and_other_metrics():
    fig = tradeoffs.pareto_figure(ROWS, "top1_agree", "bytes")
    window = fig.data[0]
    assert list(window.x) == [2.0, 4.0] and "MiB" in fig.layout.xaxis.title.text  # 2 MiB, 4 MiB
    assert list(window.y) == [0.3, 0.6] and fig.layout.yaxis.type == "linear" and "upper left" in fig.layout.title.text
    kl = tradeoffs.pareto_figure(ROWS, "kl_full")
    assert list(kl.data[1].y) == [0.2, 0.1]
    with pytest.raises(ValueError):
        tradeoffs.pareto_figure(ROWS, "speed")


def test_full_cache_marked_from_the_reference_when_not_a_row():
    reference = {"ppl": 19.5, "kv_bytes_full": FULL_BYTES}
    fig = tradeoffs.pareto_figure(ROWS[1:], "ppl", "bytes", reference=reference)
    star = fig.data[-1]
    assert star.name == "full cache" and list(star.x) == [8.0] and list(star.y) == [19.5]
    assert list(tradeoffs.pareto_figure(ROWS[1:], "kl_full", reference=reference).data[-1].y) == [0.0]
    no_full = tradeoffs.pareto_figure(ROWS[1:], "ppl")
    assert "full cache" not in [t.name for t in no_full.data]


def test_series_names_are_escaped():
    hostile = ppl_row("window", params="<img src=x onerror=alert(1)>", ratio=0.5, kv=4 * MiB)
    fig = tradeoffs.pareto_figure([hostile], "ppl")
    assert "<img" not in fig.data[0].name and "&lt;img" in fig.data[0].name
    assert "<img" not in fig.data[0].hovertext[0]


def passkey_row(policy, depth, length, found, budget=20, params=""):
    return SweepRow("passkey", policy, params, 0.1, budget, 100, 1000, 1000, 1.0, depth=depth, length=length,
                    found=found, answer=f"The pass key is {'12345' if found else '1'}.").to_dict()


def test_passkey_heatmaps_hold_what_the_rows_say():
    rows = [
        passkey_row("full", 0.1, 500, True, budget=None), passkey_row("full", 0.9, 500, True, budget=None),
        passkey_row("snapkv", 0.1, 500, True, params="window=8"), passkey_row("snapkv", 0.9, 500, False, params="window=8"),
        passkey_row("snapkv", 0.1, 1800, False, params="window=8"), passkey_row("snapkv", 0.9, 1800, True, params="window=8"),
    ]
    grids = tradeoffs.passkey_grid(rows)
    assert list(grids) == ["full", "snapkv:window=8"]
    snap = grids["snapkv:window=8"]
    assert snap["depths"] == [0.1, 0.9] and snap["labels"] == ["500 tok", "1800 tok"]
    assert snap["z"] == [[1.0, 0.0], [0.0, 1.0]]
    assert grids["full"]["z"] == [[1.0, 1.0]]
    fig = tradeoffs.passkey_figure(rows)
    assert len(fig.data) == 2 and [list(map(list, t.z)) for t in fig.data] == [[[1.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]]
    assert fig.data[1].text[0] == ["found", "missed"]
    assert fig.data[1].colorscale[0][1] == COLORS["differ"] and fig.data[1].colorscale[-1][1] == COLORS["agree"]
    assert [a.text for a in fig.layout.annotations] == ["full", "snapkv:window=8"]


def test_passkey_rows_with_two_budgets_get_a_row_each():
    rows = [passkey_row("h2o", 0.5, 500, True, budget=50), passkey_row("h2o", 0.5, 500, False, budget=25)]
    grid = tradeoffs.passkey_grid(rows)["h2o"]
    assert grid["labels"] == ["500 tok · 25/head", "500 tok · 50/head"] and grid["z"] == [[0.0], [1.0]]


def test_best_within_a_memory_limit_by_hand():
    assert tradeoffs.best_within(ROWS, 25, "ppl")["series"] == "streaming_llm"  # 22 at 25% beats quant's 40 and window's 300
    assert tradeoffs.best_within(ROWS, 20, "ppl")["series"] == "quant:bits=2"
    assert tradeoffs.best_within(ROWS, 60, "top1_agree")["kv_pct"] == 50.0
    assert tradeoffs.best_within(ROWS, 5, "ppl") is None


def test_report_holds_the_charts_and_the_table():
    result = {"settings": {"task": "ppl", "policies": ["window"]}, "rows": ROWS, "reference": {"ppl": 20.0, "kv_bytes_full": FULL_BYTES},
              "model": "SmolLM2", "device": "cpu", "dtype": "float32", "seconds": 3.0}
    report = tradeoffs.sweep_report(result)
    assert [h for h, _ in report.sections] == [
        "Perplexity of the continuation", "Mean KL(full ‖ policy), nats", "Top-1 agreement with the full cache", "Table",
    ]
    table = report.sections[-1][1]
    assert list(table["policy"]) == [r["policy"] for r in ROWS] and list(table["ppl"]) == [r["ppl"] for r in ROWS]
    assert math.isclose(table["kv_pct"][1], 50.0)
    assert rows_csv(ROWS).splitlines()[2].startswith("window,,0.5,64,4194304,4194304,8388608,50.0,60.0,0.9,0.6")


def test_describe_best_says_what_it_costs():
    best = tradeoffs.best_within(ROWS, 25, "ppl")
    text = tradeoffs.describe_best(best, "ppl", {"ppl": 20.0, "kv_bytes_full": FULL_BYTES}, 25)
    assert text == (
        "Within 25% of the full cache's memory, the lowest perplexity is streaming_llm at 25.0% (ratio 0.25, 32 entries "
        "per KV head): perplexity 22.00 against 20.00 for the full cache (+10.0%), mean KL 0.200 nats, top-1 agreement 80%."
    )
    quant = tradeoffs.describe_best(ROWS[-1], "kl_full", None, 20)
    assert "the lowest KL" in quant and "quant:bits=2 at 12.5%:" in quant


def test_log_ticks_by_hand():
    assert tradeoffs.log_ticks(36.5, 163.0) == [20.0, 50.0, 100.0, 200.0]
    assert tradeoffs.log_ticks(80.0, 90.0) == [50.0, 100.0]
    fig = tradeoffs.pareto_figure(ROWS, "ppl")
    assert list(fig.layout.yaxis.tickvals) == [20.0, 50.0, 100.0, 200.0, 500.0] and fig.layout.yaxis.ticktext[-1] == "500"


def test_every_point_names_its_row_and_a_choice_is_drawn_selected():
    """A click on a point hands the page its customdata: the index of the row whose numbers the
    point shows (checked against the rows themselves); ``selected`` draws exactly those points."""
    for metric in tradeoffs.METRICS:
        fig = tradeoffs.pareto_figure(ROWS, metric, "pct")
        for trace in fig.data:
            for x, y, i in zip(trace.x, trace.y, trace.customdata):
                assert (x, y) == (ROWS[i]["kv_pct"], ROWS[i][metric])
        named = sorted(i for t in fig.data for i in t.customdata)
        assert named == list(range(len(ROWS)))  # every row once, the full cache's row as its star
        assert all(t.selectedpoints is None for t in fig.data)
    fig = tradeoffs.pareto_figure(ROWS, "ppl", "pct", selected=[2, 3])
    chosen = sorted(t.customdata[k] for t in fig.data for k in (t.selectedpoints or []))
    assert chosen == [2, 3]
