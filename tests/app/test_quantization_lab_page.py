"""AppTest of the Quantization lab on the embedded SmolLM2 (CPU): the default prompt's real cache,
the numbers shown checked against the lab's own tables and by hand, another layer and head, the
next-token runs, and prompts too short or hostile."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "7_Quantization_Lab.py")
TIMEOUT = 600


def page(**state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


@pytest.fixture(scope="module")
def default(smollm):  # smollm first: the weights cache is warm
    at = page()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_defaults_show_the_real_cache_and_the_grid(default):
    at = default
    lc = at.session_state["qlab.lc"]
    assert lc.layer == 15 and lc.keys.shape == (3, 37, 64)  # the 37-token default chat prompt
    figs = figures(at)
    assert len(figs) == 4  # magnitudes, token profile, error grid, KIVI window
    heat = figs[0]["data"][0]
    assert heat["z"]["shape"] == "37, 64"  # tokens x channels (plotly packs the array)
    grid = at.dataframe[0].value
    assert set(grid["bits"]) == {8, 4, 2}
    # the grid runs on the first 32 tokens (per-channel groups of 16 and 32 fit in 37 tokens)
    per_token_4 = grid[(grid["scheme"] == "per token, G=32") & (grid["bits"] == 4)].iloc[0]
    assert per_token_4["bytes"] == 2 * 3 * 32 * (32 + 2 * 2 * 4)  # K and V, 3 KV heads, fp32 scales and zeros
    summary = next(m.value for m in at.markdown if m.value.startswith("Measured on this layer"))
    per_channel_4 = grid[(grid["scheme"] == "per channel, G=32") & (grid["bits"] == 4)].iloc[0]
    assert f"key error per channel {per_channel_4['key error']:.1%} vs per token {per_token_4['key error']:.1%}" in summary


def test_kivi_window_sentence_on_the_real_numbers(default):
    text = next(m.value for m in default.markdown if m.value.startswith("Of the 37 tokens"))
    # R = 32: keys 32 quantized in one group, 5 waiting; values 5 quantized, 32 newest in full precision
    assert "**keys**: 32 quantized per channel in 1 group of 32 tokens, 5 in full precision" in text
    assert "**values**: 5 quantized per token, the 32 newest in full precision" in text


def test_another_layer_and_head(smollm):
    at = page(**{"qlab.layer": 0, "qlab.head": 2, "qlab.residual": 8})
    assert not at.exception and not at.error
    assert at.session_state["qlab.lc"].layer == 0
    title = figures(at)[0]["layout"]["title"]["text"]
    assert title.startswith("Layer 0, KV head 2")
    text = next(m.value for m in at.markdown if m.value.startswith("Of the 37 tokens"))
    assert "32 quantized per channel in 4 groups of 8 tokens" in text and "29 quantized per token" in text


def test_next_token_runs(default):
    at = default
    at.number_input(key="_qlab.new_tokens").set_value(2)
    at.button(key="qlab.run").click().run()
    assert not at.exception and not at.error
    rows = at.dataframe[-1].value
    assert list(rows["scheme"])[-2:] == ["KIVI-4 (R=32, G=32)", "KIVI-2 (R=32, G=32)"] and len(rows) == 8
    assert (rows["mean KL"] >= 0).all()
    by_bits = rows[rows["scheme"] == "per token, G=32"].set_index("bits")
    assert by_bits.loc[2, "mean KL"] > by_bits.loc[8, "mean KL"]
    assert by_bits.loc[2, "cache bytes"] < by_bits.loc[8, "cache bytes"]


@pytest.mark.parametrize("text, message", [("Hi", "needs at least 16"), ("   ", "The prompt is empty")])
def test_short_or_empty_prompts_get_a_message(smollm, text, message):
    at = page(kvviz_prompt_name="Custom", kvviz_custom_prompt=text, **{"kvviz_chat::Custom": False})
    assert not at.exception, [e.message for e in at.exception]
    shown = [e.value for e in at.error] + [i.value for i in at.info]
    assert any(message in s for s in shown), shown


def test_a_hostile_prompt_is_only_data(smollm):
    hostile = "<img src=x onerror=alert(1)> **bold** [x](javascript:alert(1)) " * 4
    at = page(kvviz_prompt_name="Custom", kvviz_custom_prompt=hostile)
    assert not at.exception and not at.error
    for m in at.markdown:
        assert "<img" not in m.value and "javascript:" not in m.value
    assert re.search(r"\d+ prompt tokens", " ".join(c.value for c in at.caption))
