"""AppTest of the Dedup page on the embedded SmolLM2 (CPU): nothing runs before Run, a prompt
without a repeat says so, a short prompt with a repeated (hostile) span: its numbers by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz.record.examples import REPEATED_PASSAGE_EXAMPLE

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "8_Dedup.py")
SPAN = "<b>The harbor light turns every ten seconds</b>"
PROMPT = f"Note: {SPAN}. Again: {SPAN}. How often does it turn?"


@pytest.fixture
def page(smollm) -> AppTest:  # smollm first: the weights cache is warm
    at = AppTest.from_file(PAGE, default_timeout=600).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_nothing_runs_before_run_and_the_example_fills_the_prompt(page):
    assert any("Pick the example" in i.value for i in page.info) and not page.metric
    at = page.button(key="dedup.example").click().run()
    assert at.text_area(key="dedup.text").value == REPEATED_PASSAGE_EXAMPLE


def test_a_prompt_without_repeats_says_so(page):
    page.text_area(key="dedup.text").set_value("The capital of France is Paris.")
    at = page.button(key="dedup.run").click().run()
    assert not at.exception and "nothing to deduplicate" in at.error[0].value


def test_a_repeated_span_by_hand(page, smollm):
    page.text_area(key="dedup.text").set_value(PROMPT)
    page.slider(key="dedup.new_tokens").set_value(2)
    at = page.button(key="dedup.run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    result = at.session_state["dedup.result"]
    n = len(smollm.tokenizer(PROMPT).input_ids)
    (span,) = result["spans"]
    assert SPAN in span["text"] and result["prompt_tokens"] == n
    per_token = 30 * 2 * 3 * 64 * 4  # layers x (K, V) x kv heads x head dim x float32
    rows = at.dataframe[1].value  # the recompute table
    assert list(rows["recomputed"]) == ["0%", "10%", "20%", "50%", "100%"]
    assert list(rows["of full"])[0] == f"{(n - span['length']) / n:.1%}" and list(rows["of full"])[-1] == "100.0%"
    assert list(rows["top-1"])[-1] == "100%" and list(rows["KL (mean, nats)"])[-1] < 1e-5
    assert result["recompute"][0]["kv_bytes"] == (n - span["length"]) * per_token
    deviation, recompute = (json.loads(c.proto.spec) for c in at.get("plotly_chart"))
    assert deviation["data"][1]["y"][0] == 0.0 and len(deviation["data"][0]["x"]) == 30  # values: layer 0 exact
    assert [round(x) for x in recompute["data"][0]["x"]] == [0, 10, 20, 50, 100]
    assert "<b>" not in "".join(m.value for m in at.markdown)  # the span's text only in the (escaped) table
