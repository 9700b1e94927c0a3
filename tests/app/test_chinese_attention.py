"""The Attention explorer opened with lang=zh, after its analysis ran on a short prompt: the page's own
text (title, captions, controls, metrics, the overview's, detail's and profiles' titles and axes, the
head-profile table's columns) has no English sentence left and no "not translated" notice; the
same page in English is the English text itself; a chart built under the Chinese session is Chinese."""

from __future__ import annotations

import json
import math
from pathlib import Path

from streamlit.testing.v1 import AppTest

from kvviz.ui.attention_memo import THUMB_CELLS
from tests.app.test_chinese_pages import assert_chinese, english_runs

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "1_Attention.py")
PROMPT = "The cat sat on the mat. Where did the cat sit?"


def figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def page(lang: str | None, **state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=300)
    if lang:
        at.query_params["lang"] = lang
    at.session_state["kvviz_prompt_name"] = "Custom"
    at.session_state["kvviz_custom_prompt"] = PROMPT
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def test_attention_page_in_chinese_and_back_in_english(smollm):
    at = page("zh", **{"attn.new_tokens": 2})
    assert not at.error, [e.value for e in at.error]
    assert_chinese(at)
    assert at.title[0].value == "注意力探索" and not any("尚未翻译" in i.value for i in at.info)
    assert [s.value for s in at.main.subheader] == ["所有层和头", "单个头的细节", "各头的特征"]
    assert [m.label for m in at.metric] == ["前 4 个 token 上的注意力", "所在行的熵", "它收到的注意力（H2O 分数）", "它最关注"]
    assert at.radio(key="_attn.pool").value == "max"  # the widget's value stays English: only its label is shown in Chinese
    assert list(at.dataframe[0].value.columns)[:4] == ["层", "头", "KV 头", "sink 占比"]
    overview, detail, profiles = figures(at)
    n = len(next(t for t in detail["data"] if t.get("name") == "注意力")["x"])  # every token, one per column
    tile = math.ceil(n / THUMB_CELLS)  # the overview's thumbnails: at most 32 cells a side
    assert tile == 2 and overview["layout"]["title"]["text"] == f"{n} 个 token · 每格 2 个 token"
    assert detail["layout"]["title"]["text"].startswith("第 15 层 · 头 0（KV 头 0）· 查询 0–") and "全分辨率" in detail["layout"]["title"]["text"]
    assert detail["layout"]["xaxis3"]["title"]["text"] == "键" and profiles["layout"]["xaxis"]["title"]["text"] == "sink 占比：前 4 个 token 上的注意力"
    heads = next(t for t in overview["data"] if t.get("name") == "头")  # series names are read aloud (kvviz.charts.summary.describe)
    assert heads["hovertext"][0].startswith("<b>第 0 层 · 头 0</b><br>KV 头 0（与头 1, 2 共享）<br>sink 占比 ")

    # the switch back to English: the page's English, byte for byte
    at.sidebar.radio(key="_kvviz_lang").set_value("en").run()
    assert not at.exception and at.title[0].value == "Attention explorer"
    assert [s.value for s in at.main.subheader] == ["Every layer and head", "One head in detail", "Head profiles"]
    overview = figures(at)[0]
    assert overview["layout"]["title"]["text"] == f"{n} tokens · 2 tokens per cell"
    assert at.main.caption[1].value.startswith("One small heatmap per head: queries down, keys across, 2 tokens per cell (max of the tile).")


def test_a_policy_run_in_chinese(smollm):
    """The cache policy's evictions: the step slider, the metrics and the lost-attention chart."""
    at = page("zh", **{"attn.use_policy": True, "attn.new_tokens": 3})
    assert not at.error, [e.value for e in at.error]
    assert at.slider(key="_attn.step").label == "缓存所处的步"
    labels = [m.label for m in at.metric]
    assert "第 2 步被驱逐的键" in labels and "第 2 步损失的注意力" in labels
    evicted = next(m for m in at.metric if m.label == "第 2 步被驱逐的键").value
    assert " / " in evicted and not english_runs(evicted)
    lost = next(f for f in figures(at) if f["data"][0].get("name") == "因驱逐损失的注意力")
    assert (lost["layout"]["xaxis"]["title"]["text"], lost["layout"]["yaxis"]["title"]["text"]) == ("步", "损失")
    assert lost["data"][0]["hovertemplate"].startswith("第 %{x} 步<br>该步 %{y:.1%} 的注意力")
