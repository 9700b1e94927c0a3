"""The Memory calculator (on the device, the 70B question, offloaded with SparQ) and the Quantization
lab (as it opens and with its next-token runs' results) with lang=zh: the page's own text (title, captions,
controls, notices, the fit answer, metric labels, table columns, chart titles and axes) has no English
sentence left and no "not translated" notice; the numbers are those of the English page; a chart
built under the Chinese session is Chinese."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from kvviz import i18n
from kvviz.calculator.architectures import NOTES, bundled
from kvviz.quant_lab import run as lab

from tests.app.test_chinese_pages import assert_chinese, english_runs

REPO = Path(__file__).resolve().parents[2]
CALC = str(REPO / "pages" / "6_Memory_Calculator.py")
LAB = str(REPO / "pages" / "7_Quantization_Lab.py")
PROMPT = ("The harbor light turns every ten seconds, and the ferry leaves at noon from the north pier. The captain checks "
          "the tide tables twice before each crossing. When does the ferry leave?")  # 36 tokens: the grid's 32-token groups fit


def page(path: str, lang: str | None = "zh", **state) -> AppTest:
    at = AppTest.from_file(path, default_timeout=300)
    if lang:
        at.query_params["lang"] = lang
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def layouts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec)["layout"] for chart in at.get("plotly_chart")]


def columns(at: AppTest) -> list[str]:
    return [str(c) for frame in at.dataframe for c in frame.value.columns]


def no_notice(at: AppTest) -> bool:
    return not any("尚未翻译" in i.value for i in at.info)


def test_the_calculator_in_chinese_on_the_device_and_offloaded(smollm):
    at = page(CALC)
    assert_chinese(at)
    assert at.title[0].value == "内存计算器" and no_notice(at)
    assert not [c for c in columns(at) if english_runs(c)], columns(at)
    assert "每条序列" in columns(at) and "一块 H100 80GB 可容纳的序列数" in columns(at)
    # the per-token formula under each kind of attention: Llama-2-7B, 2 x 32 layers x 32 KV heads x 128 dims x 2 bytes
    assert "2（K、V）× 32 层 × 32 个 KV 头 × 128 维 × 2 字节（bf16） = 每个 token 524,288 字节" in [c.value for c in at.caption]

    at.button(key="calc.question").click().run()  # 70B on an H100 with int4 weights: bf16 against KIVI-2
    assert_chinese(at)
    answer = at.success[0].value
    english = page(CALC, lang=None)
    english.button(key="calc.question").click().run()
    bf16 = english.dataframe[0].value.to_dict("records")[0]["sequences on one H100 80GB"]
    assert answer.startswith("一块 H100 80GB（可用 90% 显存）可同时容纳的 32,768 token 请求数：")
    assert f"bf16 为 **{bf16}** 条" in answer and bf16 == 3  # the English page's number, in the Chinese sentence

    at = AppTest.from_file(CALC, default_timeout=300)  # the offload mode, from a link
    at.query_params.update({"lang": "zh", "mode": "offload", "method": "sparq"})
    at.run()
    assert_chinese(at)
    assert no_notice(at) and "卸载时" in at.success[0].value
    assert not [c for c in columns(at) if english_runs(c)], columns(at)
    offload = next(lay for lay in layouts(at) if "卸载到主机内存" in lay["title"]["text"])
    assert offload["yaxis"]["title"]["text"].startswith("单条序列（")


def test_the_quantization_lab_in_chinese_after_its_runs(smollm):
    at = page(LAB, kvviz_prompt_name="Custom", kvviz_custom_prompt=PROMPT, **{"kvviz_chat::Custom": False, "qlab.layer": 3})
    assert not at.error, [e.value for e in at.error]
    assert_chinese(at)
    assert at.title[0].value == "量化实验室" and no_notice(at)
    titles = [lay["title"]["text"] for lay in layouts(at)]
    assert titles[0].startswith("第 3 层，KV 头 0：离群 key 通道") and len(titles) == 4
    assert any(m.value.startswith("在这一层上的实测结果：") for m in at.markdown)

    # the next-token section as a run leaves it (the real runs are tests/app/test_quantization_lab_page.py's, in English):
    # each scheme's result, its KL and bytes made up, shown by the page in Chinese
    schemes = lab.next_token_schemes(32)
    at.session_state["qlab.next"] = [lab.NextTokenResult(s, np.array([0.01 * (i + 1)]), 1.0, 1000 - 10 * i, 4000) for i, s in enumerate(schemes)]
    at.run()
    assert not at.error, [e.value for e in at.error]
    assert_chinese(at)
    rows = at.dataframe[-1].value
    assert list(rows.columns)[:3] == ["方案", "位数", "平均 KL"] and len(rows) == 8
    assert list(rows["方案"])[:2] == ["按 token，G=32", "按通道，G=32"]
    assert list(rows["方案"])[-1] == "KIVI-2 (R=32, G=32)"
    next_token = layouts(at)[-2]
    assert next_token["xaxis"]["title"]["text"] == "缓存占用，全部层（KiB，打包后）"


def test_every_bundled_note_is_marked_and_translated():
    """The architectures' notes live in kvviz/data/architectures.json, which pybabel does not read:
    architectures.NOTES marks each one (the page shows _(note)), and the catalog translates it."""
    notes = {a.note for a in bundled().values() if a.note}
    assert notes == set(NOTES) and len(notes) == 8
    zh = i18n.translations("zh")
    assert all(zh.gettext(n) != n for n in NOTES)
