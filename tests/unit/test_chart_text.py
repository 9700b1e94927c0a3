"""Charts that say what they show and do not hide one line under another: the one-line text
alternative of a figure, the note when two policies' lines lie on one another, series told apart
by dash and marker (not hue alone), and every page's chart shown through ``kvviz.ui.a11y.chart``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from tiny_comparison import tiny_comparison

from kvviz.charts import compare as charts
from kvviz.charts.summary import describe, plain
from kvviz.charts.token_map import token_states_figure
from kvviz.record.token_states import TokenRecord

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def result(tiny_llama):
    return tiny_comparison(tiny_llama)  # h2o and streaming_llm at the same budget of 24, and 4-bit quant


def test_the_summary_says_kind_title_axes_and_series(result):
    fig = charts.memory_figure(result, step=1)
    text = describe(fig)
    assert text.startswith("Line chart: K/V cache held per step")
    assert "x: decode step" in text and "y: KiB" in text
    for label in ["full cache", *result.labels]:
        assert label in text
    assert "<" not in text and "\n" not in text  # plain, one line (it is escaped where it is shown)
    assert describe(fig, what="memory, <b>bold</b>").startswith("Line chart: memory, bold.")


def test_the_summary_of_the_token_map_names_its_states():
    records = [TokenRecord(position=i, text=str(i), state=s, score=None, evicted_at_step=None, kept_share=1.0, generated=False)
               for i, s in enumerate(["sink", "kept", "evicted"])]
    text = describe(token_states_figure(records, step=0))
    assert text.startswith("Scatter plot") and "sink (1)" in text and "evicted (1)" in text
    assert "x:" not in text  # the map hides its axes: none is named


def test_plain_text_of_plotly_labels():
    assert plain("a<br><sup>b &amp; c<br>d</sup>") == "a · b &amp; c d"


def test_lines_on_one_another_are_named(result):
    same_bytes = [i for i, run in enumerate(result.runs) if run.trace.budget == 24]
    runs = result.runs
    assert np.array_equal(runs[0].trace.kv_bytes, runs[2].trace.kv_bytes)  # the case this test is about
    title = plain(charts.memory_figure(result).layout.title.text)
    assert f"{result.labels[0]} = {result.labels[2]}" in title and result.labels[1] not in title.split(":", 1)[1]
    assert len(same_bytes) == 2
    # and the earlier line is drawn wider, so it shows around the later one lying on it
    fig = charts.memory_figure(result)
    lines = {t.meta: t.line for t in fig.data}
    assert lines["p1"].width > lines["p2"].width > lines["p3"].width


def test_coinciding_groups_equal_series_only():
    assert charts.coinciding(["a", "b", "c", "d"], [[1, 2], [1, 3], [1, 2], [1, 3]]).endswith("a = c; b = d")
    assert charts.coinciding(["a", "b"], [[1, 2], [1, 2, 3]]) == ""


def test_policies_differ_by_dash_and_marker(result):
    fig = charts.memory_figure(result)
    looks = [(t.line.dash, t.marker.symbol) for t in fig.data if str(t.meta).startswith("p")]
    assert len(looks) == len(result.runs) and len(set(looks)) == len(looks)
    kl = charts.agreement_figure(result)
    looks = [(t.line.dash, t.marker.symbol) for t in kl.data if re.fullmatch(r"p\d", str(t.meta))]
    assert len(set(looks)) == len(looks) == len(result.runs)


def test_every_chart_on_a_page_goes_through_the_accessible_helper():
    """A chart shown with st.plotly_chart directly would have no text alternative."""
    offenders = []
    for path in [*REPO.glob("pages/*.py"), REPO / "app.py", *REPO.glob("kvviz/ui/*.py")]:
        if path.name == "a11y.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\w\.plotly_chart\(", line) and "``" not in line:  # a call, not a docstring's mention
                offenders.append(f"{path.relative_to(REPO)}:{n}")
    assert not offenders, offenders
