"""AppTest of the Memory calculator page: defaults, the 70B/H100/KIVI question in one click, the
chart's data, edge inputs (nothing picked, KIVI on MLA, pasted configs good, bad and hostile), and
the calculator checked against a real run of the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz.ui.token_html import md_escape

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "6_Memory_Calculator.py")
TIMEOUT = 300
H100_USABLE = int(81_559 * 2**20 * 0.9)  # nvidia-smi's total for an H100 80GB, 90% usable


@pytest.fixture()
def page(smollm):  # smollm first: the weights cache is warm
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def table(at, i=0) -> list[dict]:
    return at.dataframe[i].value.to_dict("records")


def chart(at, key="calc.chart") -> dict:
    charts = [c for c in at.get("plotly_chart") if c.proto.id and key in c.proto.id] or at.get("plotly_chart")
    return json.loads(charts[0].proto.spec)


def test_defaults(page):
    rows = {r["model"]: r for r in table(page)}
    assert list(rows) == ["Llama-2-7B", "Llama-3.1-8B", "Llama-3.1-70B", "DeepSeek-V2"]
    assert rows["Llama-2-7B"]["per token"] == "512.0 KiB"  # 2 x 32 x 32 x 128 x 2 bytes
    assert rows["Llama-3.1-8B"]["per token"] == "128.0 KiB"  # 8 KV heads
    assert rows["DeepSeek-V2"]["per token"] == "67.5 KiB"  # (512 + 64) x 60 x 2 bytes
    assert rows["Llama-2-7B"]["per sequence"] == "2.0 GiB"  # the seed's example at the default 4k context
    # bf16 weights: (usable - 2 x 8,030,261,248) // (4,096 x 131,072)
    assert rows["Llama-3.1-8B"]["sequences on one H100 80GB"] == (H100_USABLE - 2 * 8_030_261_248) // (4096 * 131_072)
    assert rows["Llama-3.1-70B"]["sequences on one H100 80GB"] == 0
    spec = chart(page)
    names = [t["name"] for t in spec["data"]]
    assert names == ["Llama-2-7B · bf16", "Llama-3.1-8B · bf16", "Llama-3.1-70B · bf16", "DeepSeek-V2 · bf16"]
    assert spec["layout"]["xaxis"]["type"] == "log"
    kinds = [m.label for m in page.metric]
    assert kinds == ["MHA · Llama-2-7B", "GQA · Llama-3.1-8B", "MQA · Gemma-2B (MQA)", "MLA · DeepSeek-V2"]
    assert [m.value for m in page.metric] == ["512.0 KiB", "128.0 KiB", "18.0 KiB", "67.5 KiB"]


def test_the_70b_question_in_one_click(page):
    page.button(key="calc.question").click().run()
    assert not page.exception
    weights = int(70_553_706_496 * (0.5 + 4 / 128))  # int4 weights with a scale and zero per 128
    bf16 = (H100_USABLE - weights) // (32_768 * 327_680)
    answer = page.success[0].value
    assert f"**{bf16}** with bf16" in answer and bf16 == 3
    rows = table(page)
    assert [(r["model"], r["cache"]) for r in rows] == [("Llama-3.1-70B", "bf16"), ("Llama-3.1-70B", "kivi-2")]
    kivi = rows[1]["sequences on one H100 80GB"]
    assert f"**{kivi}** with kivi-2 ({kivi / bf16:.1f}× as many)" in answer
    assert kivi > 5 * bf16
    spec = chart(page)
    room = [s for s in spec["layout"]["shapes"] if s.get("line", {}).get("dash") == "dot"]
    assert len(room) == 1  # the H100's room after the 70B weights, as a line


def test_nothing_picked_and_kivi_on_mla(page):
    page.multiselect(key="_calc.dtypes").set_value([]).run()
    assert not page.exception and "Pick at least one" in page.info[0].value
    page.multiselect(key="_calc.dtypes").set_value(["kivi-2"]).run()
    assert not page.exception
    assert any("MLA caches one latent vector" in w.value for w in page.warning)
    assert "DeepSeek-V2" not in [r["model"] for r in table(page)]


def test_policy_and_window_what_ifs(page):
    page.multiselect(key="_calc.archs").set_value(["llama-3.1-8b"]).run()
    page.slider(key="_calc.keep").set_value(25).run()
    assert table(page)[0]["per sequence"] == "128.0 MiB"  # round(0.25 x 4,096) x 131,072 bytes
    page.slider(key="_calc.keep").set_value(100)
    page.number_input(key="_calc.window").set_value(512).run()
    assert table(page)[0]["per sequence"] == "64.0 MiB"  # 512 x 131,072 bytes


def test_pasted_configs_good_bad_and_hostile(page):
    good = {"num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 512,
            "vocab_size": 1000, "intermediate_size": 1024}
    page.text_area(key="calc.config_text").set_value(json.dumps(good)).run()
    assert not page.exception and not page.error
    pasted = [r for r in table(page) if r["model"] == "pasted config"]
    assert pasted and pasted[0]["attention"] == "GQA"
    assert pasted[0]["per token"] == "2.0 KiB"  # 2 x 4 layers x 2 KV heads x 64 dims (512 / 8) x 2 bytes
    page.text_area(key="calc.config_text").set_value("{not json").run()
    assert not page.exception and "not valid JSON" in page.error[0].value
    hostile = {"num_hidden_layers": 2, "num_attention_heads": "<img src=x onerror=alert(1)> **bold** [link](http://x)"}
    page.text_area(key="calc.config_text").set_value(json.dumps(hostile)).run()
    assert not page.exception
    message = page.error[0].value
    assert "\\<img" in message and "\\*\\*bold\\*\\*" in message and "\\[link\\]" in message  # escaped, shown literally


def test_checked_against_a_real_run(page):
    page.button(key="calc.check").click().run()
    assert not page.exception and not page.error
    rows = table(page, -1)
    assert len(rows) == 4
    for r in rows:  # SmolLM2 on the CPU, fp32: K and V x 30 layers x 3 KV heads x 64 dims x 4 bytes per token
        assert r["measured bytes"] == r["calculated bytes"] == r["tokens held"] * 2 * 30 * 3 * 64 * 4
    assert any("agree to the byte" in s.value for s in page.success)


# ------------------------------------------------------------------ every setting in the URL

PASTED = {"num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 512,
          "vocab_size": 1000, "intermediate_size": 1024}


def settings_of(at) -> dict:
    return {
        "archs": at.multiselect(key="_calc.archs").value, "dtypes": at.multiselect(key="_calc.dtypes").value,
        "ctx": at.select_slider(key="_calc.context").value, "batch": at.slider(key="_calc.batch").value,
        "keep": at.slider(key="_calc.keep").value, "window": at.number_input(key="_calc.window").value,
        "gpu": at.selectbox(key="_calc.gpu").value, "weights": at.selectbox(key="_calc.weights").value,
        "util": at.slider(key="_calc.util").value, "group": at.selectbox(key="_calc.group").value,
        "residual": at.number_input(key="_calc.residual").value, "scale": at.selectbox(key="_calc.scale_bytes").value,
        "config": at.text_area(key="calc.config_text").value,
    }


def test_every_setting_round_trips_through_the_url(page):
    from kvviz.record.metrics import format_bytes

    page.multiselect(key="_calc.archs").set_value(["llama-3.1-8b", "mistral-7b"])
    page.multiselect(key="_calc.dtypes").set_value(["int4", "kivi-2"])
    page.select_slider(key="_calc.context").set_value(8192)
    page.slider(key="_calc.batch").set_value(3)
    page.slider(key="_calc.keep").set_value(50)
    page.number_input(key="_calc.window").set_value(2048)
    page.selectbox(key="_calc.gpu").set_value("a100-80gb")
    page.selectbox(key="_calc.weights").set_value("fp8")
    page.slider(key="_calc.util").set_value(0.8)
    page.selectbox(key="_calc.group").set_value(64)
    page.number_input(key="_calc.residual").set_value(256)
    page.selectbox(key="_calc.scale_bytes").set_value(4)
    page.text_area(key="calc.config_text").set_value(json.dumps(PASTED, indent=2)).run()
    assert not page.exception and not page.error
    link = {k: page.query_params[k] for k in page.query_params}
    assert link == {
        "archs": "llama-3.1-8b,mistral-7b", "dtypes": "int4,kivi-2", "ctx": "8192", "batch": "3", "keep": "50",
        "window": "2048", "gpu": "a100-80gb", "weights": "fp8", "util": "0.8", "group": "64", "residual": "256",
        "scalebytes": "4", "config": json.dumps(PASTED, separators=(",", ":")),
    }
    opened = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    for key, value in link.items():
        opened.query_params[key] = value
    opened.run()
    assert not opened.exception and not opened.sidebar.warning
    expected = settings_of(page) | {"config": link["config"]}  # the link carries the config compacted
    assert settings_of(opened) == expected
    assert table(opened) == table(page)
    assert {k: opened.query_params[k] for k in opened.query_params} == link  # and writes the same link back
    # the numbers by hand: min(round(0.5 x 8,192), 2,048) = 2,048 tokens held per layer
    rows = {(r["model"], r["cache"]): r for r in table(opened)}
    int4_token = 2 * 32 * 8 * (128 * 4 // 8 + 2 * 2 * 4)  # 128 dims: 64 bytes of codes + 2 groups of 64 x (scale, zero) x 4 bytes
    assert rows[("Llama-3.1-8B", "int4")]["per token"] == format_bytes(int4_token) == "40.0 KiB"
    assert rows[("Mistral-7B-v0.1", "int4")]["batch of 3"] == format_bytes(3 * 2048 * int4_token)
    # KIVI-2 as the calculator computes it with the link's G, R and scale bytes (its layout is the calculator's tests')
    from kvviz.calculator import memory as calc

    scenario = calc.Scenario(context=8192, batch=3, dtype="kivi-2", group_size=64, residual=256, full_bytes=4, keep_ratio=0.5, window=2048)
    kivi = calc.estimate(calc.get_architecture("llama-3.1-8b"), scenario).bytes_per_sequence
    assert rows[("Llama-3.1-8B", "kivi-2")]["per sequence"] == format_bytes(kivi)
    assert ("pasted config", "int4") in rows


@pytest.mark.parametrize(
    "name, text, notice, used",
    [
        ("ctx", "5000", "'5000' is not one of 256", "4k tokens"),
        ("archs", "llama-2-7b,<b>nosuch</b>", "'<b>nosuch</b>' is not a bundled architecture", "Llama-2-7B, Llama-3.1-8B, Llama-3.1-70B, DeepSeek-V2"),
        ("dtypes", "int3", "'int3' is not one of", "bf16"),
        ("util", "7", "7 is not from 0.5 to 1 in steps of 0.05", "90%"),
        ("keep", "33", "33 is not from 5 to 100 in steps of 5", "100%"),
        ("gpu", "tpu", "'tpu' is not one of", "H100 80GB"),
        ("group", "48", "'48' is not one of 16, 32, 64, 128", "32"),
        ("config", '{"num_hidden_layers": 1e30}', "num_hidden_layers must be a whole number from 1 to 1,024, not 1e+30;", "no pasted config"),
    ],
)
def test_a_link_value_that_cannot_be_used_is_named_with_what_is_used_instead(smollm, name, text, notice, used):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.query_params[name] = text
    at.run()
    assert not at.exception
    warnings = " ".join(w.value for w in at.sidebar.warning)  # markdown, escaped: a link's text is untrusted
    for part in (f"link setting '{name}' ignored: ", notice, f"; the page uses {used} instead."):
        assert md_escape(part) in warnings
    assert name not in at.query_params  # the page runs with (and links) what it uses
    assert [r["model"] for r in table(at)][:1] == ["Llama-2-7B"]



def test_a_config_too_long_for_a_link_is_left_out_and_said(page):
    long = PASTED | {"id2label": {str(i): f"label {i}" for i in range(400)}}  # about 6,000 characters compact
    page.text_area(key="calc.config_text").set_value(json.dumps(long)).run()
    assert not page.exception and "pasted config" in [r["model"] for r in table(page)]
    assert "config" not in page.query_params
    assert any("too long for a link" in c.value for c in page.caption)
