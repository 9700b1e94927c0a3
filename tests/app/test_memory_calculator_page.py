"""AppTest of the Memory calculator page: defaults, the 70B/H100/KIVI question in one click, the
chart's data, edge inputs (nothing picked, KIVI on MLA, pasted configs good, bad and hostile), and
the calculator checked against a real run of the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

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
