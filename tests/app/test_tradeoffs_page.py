"""AppTest of the Tradeoffs page: a tiny sweep's table equals the sweep core run directly, presets
set the settings, bad input gets a message, and the settings live in the URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz.sweep import run as sweep
from kvviz.record.examples import long_document
from kvviz.sweep.presets import PRESETS

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "4_Tradeoffs.py")
TIMEOUT = 600


@pytest.fixture()
def page(smollm):  # smollm first: the weights cache is warm
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def set_sweep(at, policies: str, grid: str, context: int = 16, continuation: int = 4):
    at.text_area(key="_tradeoffs.policies").set_value(policies)
    at.text_input(key="_tradeoffs.ratios").set_value(grid)
    at.number_input(key="_tradeoffs.context").set_value(context)
    at.number_input(key="_tradeoffs.continuation").set_value(continuation)
    return at.run()


def test_defaults_show_the_sinks_preset_and_an_estimate(page):
    sinks = PRESETS["sinks"].settings("cpu")
    assert page.text_area(key="_tradeoffs.policies").value == "\n".join(sinks.policies)
    assert page.text_input(key="_tradeoffs.ratios").value == "0.125,0.25,0.5"
    captions = " ".join(c.value for c in page.caption)
    assert "Estimated time:" in captions and "for 7 runs on cpu" in captions and "an estimate" in captions
    assert any("Sinks matter" not in i.value and "attention sinks" in i.value for i in page.info)  # the preset's story
    assert page.button(key="tradeoffs.stop").disabled and not page.button(key="tradeoffs.run").disabled


def test_a_tiny_sweep_shows_the_core_numbers(page, smollm):
    at = set_sweep(page, "full\nwindow\nstreaming_llm:n_sink=2", "0.5")
    assert not at.exception and not at.error
    at.button(key="tradeoffs.run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    settings = sweep.SweepSettings(policies=("full", "window", "streaming_llm:n_sink=2"), ratios=(0.5,), text=long_document(), context=16, continuation=4)
    direct = sweep.run(smollm.model, smollm.tokenizer, settings)
    table = at.dataframe[0].value
    assert list(table["policy"]) == ["full", "window", "streaming_llm"]
    assert list(table["budget"].fillna(-1)) == [-1, 8, 8]
    for (_, got), want in zip(table.iterrows(), direct.rows):
        assert got["ppl"] == pytest.approx(want.ppl, rel=1e-5)
        assert got["kl_full"] == pytest.approx(want.kl_full, abs=1e-5)
        assert got["top1_agree"] == want.top1_agree and got["kv_bytes"] == want.kv_bytes
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Runs"] == "4" and float(metrics["Full cache perplexity"]) == pytest.approx(direct.reference["ppl"], abs=0.006)
    assert len(at.get("plotly_chart")) == 1
    best = min(direct.rows[1:], key=lambda r: r.ppl)  # both hold 8 of 19 entries (42%): nothing fits the 25% default
    assert any("holds 25% of the full cache or less" in w.value for w in at.warning)
    at.number_input(key="_tradeoffs.limit").set_value(60).run()
    (success,) = [s.value.replace("\\", "") for s in at.success]  # markdown-escaped text
    assert f"the lowest perplexity is {best.series} at {100 * 8 / 19:.1f}% (ratio 0.5, 8 entries per KV head)" in success
    at.radio(key="_tradeoffs.metric").set_value("top1_agree").run()
    assert not at.exception and at.query_params["metric"] == "top1_agree"


def test_a_preset_sets_the_settings(page):
    at = page.button(key="tradeoffs.preset.snapkv").click().run()
    assert not at.exception
    snap = PRESETS["snapkv"].settings("cpu")
    assert at.radio(key="_tradeoffs.task").value == "passkey"
    assert at.text_area(key="_tradeoffs.policies").value == "\n".join(snap.policies)
    assert at.text_input(key="_tradeoffs.depths").value == "0.1,0.5,0.9" and at.text_input(key="_tradeoffs.lengths").value == "500"
    assert any("pass key" in i.value for i in at.info)
    assert at.query_params["task"] == "passkey"


def test_the_policy_controls_add_a_line(page):
    page.selectbox(key="tradeoffs.add.name").set_value("snapkv").run()
    page.number_input(key="tradeoffs.add.snapkv.window").set_value(8).run()
    at = page.button(key="tradeoffs.add_button").click().run()
    assert not at.exception
    assert at.text_area(key="_tradeoffs.policies").value.splitlines()[-1] == "snapkv:window=8"
    assert not [r for r in at.radio if r.key.endswith("budget_mode")]  # the sweep sets the budgets
    assert "for 10 runs on cpu" in " ".join(c.value for c in at.caption)  # 1 + 3 policies x 3 ratios


@pytest.mark.parametrize(
    "policies, grid, message",
    [
        ("window", "0.1,x", "Ratios: expected numbers"),
        ("nope", "0.5", "Unknown policy"),
        ("h2o:recent=4,budget=500", "0.5", "larger than the prompt"),
        ("", "0.5", "at least one policy"),
    ],
)
def test_bad_input_gets_a_message_and_the_page_keeps_working(page, policies, grid, message):
    at = set_sweep(page, policies, grid)
    assert not at.exception
    assert any(message in e.value.replace("\\", "") for e in at.error), [e.value for e in at.error]
    at = set_sweep(at, "window", "0.5")
    assert not at.exception and not at.error


def test_settings_round_trip_through_the_url(smollm):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.query_params["policies"] = "full\nsnapkv:window=8"
    at.query_params["task"] = "passkey"
    at.query_params["mode"] = "budgets"
    at.query_params["budgets"] = "20,40"
    at.query_params["depths"] = "0.25"
    at.query_params["lengths"] = "300"
    at.run()
    assert not at.exception and not at.error
    assert at.text_area(key="_tradeoffs.policies").value == "full\nsnapkv:window=8"
    assert at.radio(key="_tradeoffs.task").value == "passkey" and at.radio(key="_tradeoffs.mode").value == "budgets"
    assert at.text_input(key="_tradeoffs.budgets").value == "20,40"
    assert at.text_input(key="_tradeoffs.depths").value == "0.25" and at.text_input(key="_tradeoffs.lengths").value == "300"
    assert "for 3 runs on cpu" in " ".join(c.value for c in at.caption)  # full once, snapkv at two budgets
    at.text_input(key="_tradeoffs.lengths").set_value("400").run()
    assert at.query_params["lengths"] == "400" and at.query_params["budgets"] == "20,40"
    at.radio(key="_tradeoffs.task").set_value("ppl").run()
    assert "task" not in at.query_params  # back at the default: links stay short
