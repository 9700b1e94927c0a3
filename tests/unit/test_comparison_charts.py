"""The comparison's figures and report hold the data of the runs: one series per policy in its
colour, the full cache dashed, the first divergences where the outputs part, the step marked."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pytest

from kvviz.charts import compare as charts
from kvviz.charts.style import COLORS, series_color
from tiny_comparison import tiny_comparison

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def result(tiny_llama):
    return tiny_comparison(tiny_llama)


def by_meta(fig) -> dict:
    return {t.meta: t for t in fig.data}


def test_memory_figure_has_the_full_cache_and_one_series_per_policy(result):
    fig = charts.memory_figure(result, step=2)
    series = by_meta(fig)
    assert set(series) == {"full", "p1", "p2", "p3"}
    full = series["full"]
    assert full.line.dash == "dash" and full.line.color == COLORS["full"] and full.name == "full cache"
    kib = 1024  # the tiny model's caches are tens of KiB
    np.testing.assert_allclose(full.y, np.array(result.full.kv_bytes_full) / kib)
    for i, run in enumerate(result.runs):
        s = series[f"p{i + 1}"]
        assert s.line.color == series_color(i) and s.name == run.label
        np.testing.assert_allclose(s.y, np.array(run.trace.kv_bytes) / kib)
    assert fig.layout.yaxis.title.text == "KiB"
    assert [shape.x0 for shape in fig.layout.shapes] == [2]  # the step in view


def test_agreement_figure_holds_kl_top1_and_the_divergences(result):
    fig = charts.agreement_figure(result, step=1)
    series = by_meta(fig)
    assert series["full"].line.dash == "dash" and list(series["full"].y) == [0] * result.full.n_steps
    for i, run in enumerate(result.runs):
        p = f"p{i + 1}"
        np.testing.assert_allclose(series[p].y, run.forced.kl_to_reference)
        assert series[p].line.color == series_color(i)
        agree = run.forced.top1_agreement
        assert list(series[f"{p}.top1"].marker.symbol) == ["circle" if a else "x-thin-open" for a in agree]
        div = run.first_divergence(result.full)
        marker = series.get(f"{p}.divergence")
        if div is None:
            assert marker is None
        else:
            assert list(marker.x) == [div] and marker.y[0] == pytest.approx(float(run.forced.kl_to_reference[div]))
    # the tiny model's runs part from the full cache: h2o at token 4, streaming_llm at 1; 4-bit quant
    # (its prefill reads the prompt in full precision) keeps the full cache's tokens here
    assert [r.first_divergence(result.full) for r in result.runs] == [4, None, 1]
    assert len([s for s in fig.layout.shapes if s.x0 == 1]) == 2  # the step, on both rows


def test_tables_hold_the_runs(result):
    summary = result.summary_table(step=3)
    assert list(summary["policy"]) == ["full cache"] + [r.label for r in result.runs]
    assert list(summary["kv_bytes"]) == [result.full.kv_bytes[3]] + [r.trace.kv_bytes[3] for r in result.runs]
    assert list(summary["kept entries per layer and KV head"]) == [43.0, 24.0, 43.0, 24.0]  # 40 prompt + 3 generated
    divergence = summary["first divergence"]  # none for the full cache itself and for 4-bit quant here
    assert divergence.isna().tolist() == [True, False, True, False] and list(divergence[[1, 3]]) == [4, 1]
    steps = result.steps_table()
    assert len(steps) == 4 * 5 and set(steps.columns) >= {"policy", "step", "kv_bytes", "KL to full (nats)", "top-1 agrees"}
    h2o = steps[steps.policy == result.runs[0].label]
    np.testing.assert_allclose(h2o["KL to full (nats)"], result.runs[0].forced.kl_to_reference, rtol=1e-6)


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def test_report_is_standalone_and_escapes_the_prompt(result):
    result.settings.prompt_text = HOSTILE
    try:
        text = charts.report(result, step=2).to_html()
    finally:
        result.settings.prompt_text = "forty numbers"
    parser = Tags()
    parser.feed(text)
    assert "img" not in parser.tags and "&lt;script&gt;alert" in text
    assert text.count("Plotly.newPlot") == 2  # both charts, plotly.js embedded once
    for run in result.runs:
        assert run.spec.to_text() in text
    assert "K\\u002fV cache held per step" in text  # the figure's JSON, where plotly escapes "/"
    assert all(f"<h2>{h}</h2>" in text for h in ("Summary", "Memory per step", "KL and top-1 per step", "Per step", "Prompt"))
