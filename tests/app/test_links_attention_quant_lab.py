"""A shared link reopens the Attention explorer and the Quantization lab as they were: every choice
is in the URL, a fresh session opened on it finds the same settings and the same result, and a
value that cannot be used is named in a notice instead of breaking the page."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGES = Path(__file__).resolve().parents[2] / "pages"
ATTENTION, QUANT_LAB = str(PAGES / "1_Attention.py"), str(PAGES / "7_Quantization_Lab.py")


def opened(page: str, **params) -> AppTest:
    at = AppTest.from_file(page, default_timeout=600)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def detail_title(at: AppTest) -> str:
    return json.loads(at.get("plotly_chart")[1].proto.spec)["layout"]["title"]["text"]


def test_attention_link_round_trips(smollm):
    first = opened(ATTENTION, new="0")
    first.number_input(key="attn.layer").set_value(4)
    first.number_input(key="attn.head").set_value(7)
    first.number_input(key="attn.token").set_value(5)
    first.radio(key="_attn.pool").set_value("mean").run()
    link = {k: first.query_params[k] for k in first.query_params}
    assert link == {"new": "0", "layer": "4", "head": "7", "token": "5", "pool": "mean"}

    again = opened(ATTENTION, **link)  # a fresh session on the shared link
    assert (again.number_input(key="attn.layer").value, again.number_input(key="attn.head").value) == (4, 7)
    assert again.number_input(key="attn.token").value == 5 and again.radio(key="_attn.pool").value == "mean"
    assert detail_title(again) == detail_title(first) and "layer 4" in detail_title(again).lower()
    assert [m.value for m in again.metric] == [m.value for m in first.metric]


def test_attention_link_with_values_that_cannot_be_used(smollm):
    at = opened(ATTENTION, new="0", layer="99", head="-1", window="9,3")
    assert at.number_input(key="attn.layer").value == 15 and at.number_input(key="attn.head").value == 0  # the defaults
    notices = " ".join(w.value for w in at.sidebar.warning)
    for name in ("layer", "head", "window"):
        assert f"link setting '{name}' ignored" in notices


def test_quant_lab_link_and_coming_back(smollm):
    first = opened(QUANT_LAB, layer="3", kv_head="2", residual="64")
    assert first.slider(key="_qlab.layer").value == 3 and first.selectbox(key="_qlab.head").value == 2
    assert first.select_slider(key="_qlab.residual").value == 64
    assert first.session_state["qlab.lc"].layer == 3  # the cache read is layer 3's
    first.slider(key="_qlab.layer").set_value(5).run()
    assert first.query_params["layer"] == "5"



def test_quant_lab_keeps_its_layer_across_pages(smollm):
    """Another page, then back: the layer is still the one chosen (it used to fall back to the middle layer)."""
    at = AppTest.from_file(str(PAGES.parent / "app.py"), default_timeout=600)
    at.switch_page("pages/7_Quantization_Lab.py").run()
    at.slider(key="_qlab.layer").set_value(5).run()
    at.switch_page("pages/0_Home.py").run()
    at.switch_page("pages/7_Quantization_Lab.py").run()
    assert not at.exception and at.slider(key="_qlab.layer").value == 5
    assert at.session_state["qlab.lc"].layer == 5
