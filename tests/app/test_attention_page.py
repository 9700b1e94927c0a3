"""AppTest of the Attention page on the embedded SmolLM2 (CPU): defaults, a prompt of over 4,000
tokens, a policy greying evicted keys, and bad input answered with a message."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz.record import examples as data
from tests.app.escaping import visitor_html

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "1_Attention.py")
TIMEOUT = 400  # the long prompt's first pass over every layer takes a minute or two on a small CPU


def figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def trace_names(fig: dict) -> list[str]:
    return [t.get("name") for t in fig["data"]]


def page(**state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def no_failure(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_defaults_show_overview_detail_and_profiles():
    at = page()
    no_failure(at)
    figs = figures(at)
    assert len(figs) == 3
    overview, detail, profiles = figs
    heads = next(t for t in overview["data"] if t.get("name") == "heads")
    assert len(heads["customdata"]) == 30 * 9  # every layer and head of SmolLM2
    assert {"attention", "causal mask", "key score", "row entropy"} <= set(trace_names(detail))
    assert "full resolution" in detail["layout"]["title"]["text"]  # a short chat fits token by token
    assert len(next(t for t in profiles["data"] if t.get("name") == "heads")["x"]) == 270
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 270
    assert [m.label for m in at.metric][:2] == ["Attention on the first 4 tokens", "Entropy of its row"]
    assert any("Attention sinks" in m.value for m in at.markdown)

    # picking another head and a token updates the detail view
    at.number_input(key="attn.layer").set_value(3)
    at.number_input(key="attn.head").set_value(7)
    at.number_input(key="attn.token").set_value(5).run()
    no_failure(at)
    detail = figures(at)[1]
    assert "layer 3 · head 7 (KV head 2)" in detail["layout"]["title"]["text"]
    assert {s.get("name") for s in detail["layout"]["shapes"]} >= {"selected row", "selected column"}


def test_prompt_over_4000_tokens_is_pooled():
    assert data.LONG_EXAMPLE in data.EXAMPLES
    at = page(kvviz_prompt_name=data.LONG_EXAMPLE, **{"attn.new_tokens": 0})
    no_failure(at)
    overview, detail, _ = figures(at)
    n = int(overview["layout"]["title"]["text"].split(" tokens")[0])
    assert n > 4000
    assert "tokens per tile" in detail["layout"]["title"]["text"]
    heat = next(t for t in detail["data"] if t.get("name") == "attention")
    assert len(heat["x"]) <= 128  # pooled to the detail resolution

    # zoom into a window of 64 tokens: full resolution
    at.slider(key="attn.window").set_value((n - 64, n)).run()
    no_failure(at)
    detail = figures(at)[1]
    assert "full resolution" in detail["layout"]["title"]["text"]
    assert len(next(t for t in detail["data"] if t.get("name") == "attention")["x"]) == 64


def test_policy_greys_evicted_keys_and_reports_lost_attention(smollm):
    from kvviz.runtime import engine
    from kvviz.policies.spec import PolicySpec
    from kvviz.record.text import encode_prompt

    at = page(**{"attn.use_policy": True, "attn.new_tokens": 6})
    no_failure(at)
    detail = figures(at)[1]
    assert "evicted keys" in trace_names(detail)
    lost = next(m for m in at.metric if m.label == "Attention lost at step 5").value
    # the page shows the engine's own measure (Trace.lost_mass), for the layer in view
    ids = encode_prompt(smollm.tokenizer, data.EXAMPLES[data.CHAT_EXAMPLE], chat=True)
    trace = engine.run(smollm.model, smollm.tokenizer, ids, PolicySpec.create("h2o"), max_new_tokens=6, capture_queries=True)
    layer = at.number_input(key="attn.layer").value
    assert lost == f"{trace.lost_mass[5, layer]:.1%}"


@pytest.mark.parametrize("text", ["   ", "x " * 9000])
def test_bad_prompts_get_a_message(text):
    at = page(kvviz_prompt_name="Custom", kvviz_custom_prompt=text)
    assert not at.exception, [e.message for e in at.exception]
    assert at.info and not at.get("plotly_chart")


def test_prompt_text_is_escaped_everywhere():
    hostile = "<img src=x onerror=alert(1)> [x](javascript:alert(1)) <script>alert(2)</script>"
    at = page(kvviz_prompt_name="Custom", kvviz_custom_prompt=hostile, **{"attn.new_tokens": 2})
    no_failure(at)
    bodies = visitor_html(at)
    shown = [html.unescape(re.sub(r"<[^>]*>", "", b)) for b in bodies]  # what a reader sees
    assert any(hostile in text for text in shown)  # the prompt, as typed
    for body in bodies:
        assert "<script" not in body and "<img" not in body and "<a " not in body
    detail = figures(at)[1]
    labels = next(t for t in detail["data"] if t.get("name") == "attention")["x"]
    assert any("&lt;" in label for label in labels) and not any("<" in label for label in labels)
