"""AppTest of the Tradeoffs preset "Retrieval vs eviction: perplexity" (issue 27): one click sets a
perplexity sweep where eviction holds and retrieval reads the same budgets (16 and 32 entries per
layer and KV head), its story is shown, the estimate counts its runs, and the metric radio offers
perplexity, KL to full and top-1 for it, as the passkey preset offers the pass key."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz.policies.selector import Retriever
from kvviz.sweep import run as sweep
from kvviz.sweep.presets import PRESETS

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "4_Tradeoffs.py")


@pytest.fixture()
def page(smollm):  # smollm first: the weights cache is warm
    at = AppTest.from_file(PAGE, default_timeout=600).run()
    assert not at.exception, at.exception
    return at


def test_the_retrieval_perplexity_preset_sets_a_ppl_sweep_at_read_budgets(page):
    preset = PRESETS["retrieval_ppl"].settings("cpu")
    at = page.button(key="tradeoffs.preset.retrieval_ppl").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.radio(key="_tradeoffs.task").value == "ppl" and at.radio(key="_tradeoffs.mode").value == "budgets"
    assert at.text_input(key="_tradeoffs.budgets").value == "16,32"
    assert at.text_area(key="_tradeoffs.policies").value == "\n".join(preset.policies)
    assert any("Perplexity, KL to the full cache" in i.value for i in at.info), [i.value for i in at.info]  # the story
    # the reference, full, and 6 policies at 2 budgets each
    assert "for 14 runs on cpu" in " ".join(c.value for c in at.caption)
    # what the points are: eviction holds b, retrieval reads b
    for spec, _ in sweep.points(preset):
        if spec.name == "full":
            continue
        policy = spec.pipeline().selector
        assert (policy.read_budget if isinstance(policy, Retriever) else spec.budget) in (16, 32), spec


def test_the_preset_shrunk_runs_and_shows_the_perplexity_side(page):
    """The preset's policies at one budget of 8 on a 16-token context: every row's budget is 8 (held
    by eviction, read by retrieval), retrieval holds the whole cache, eviction less; the chart's
    quality switches to KL to full and top-1."""
    at = page.button(key="tradeoffs.preset.retrieval_ppl").click().run()
    at.text_input(key="_tradeoffs.budgets").set_value("8")
    at.number_input(key="_tradeoffs.context").set_value(16)
    at.number_input(key="_tradeoffs.continuation").set_value(2)
    at = at.run()
    at.button(key="tradeoffs.run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    rows = {p: r for p, r in zip(table["policy"], table.to_dict("records"))}
    assert set(rows) == {"full", "snapkv", "h2o", "streaming_llm", "quest", "sparq", "simhash"}
    for name in ("snapkv", "h2o", "streaming_llm", "quest", "sparq", "simhash"):
        assert rows[name]["budget"] == 8, name
    for name in ("quest", "sparq", "simhash"):
        assert rows[name]["kv_pct"] == pytest.approx(100.0)  # retrieval keeps every entry
    assert rows["h2o"]["kv_pct"] < 100.0
    assert all(rows[n]["ppl"] > 1 and 0 <= rows[n]["top1_agree"] <= 1 for n in rows)
    for metric in ("kl_full", "top1_agree"):  # the chart's quality axis: KL to full, top-1
        at.radio(key="_tradeoffs.metric").set_value(metric).run()
        assert not at.exception and at.query_params["metric"] == metric and len(at.get("plotly_chart")) == 1
