"""Compare, Tradeoffs and the Paged cache page opened with lang=zh: their own text (titles, intros,
controls, metrics, notices, the paged scenarios' step sentences, chart titles and axes) is Chinese,
no "not translated" notice shows, and the numbers in the sentences are the run's (checked by hand
against the tokenizer). Outside a Streamlit run the same builders speak English (the CLI, JSON)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz import i18n
from kvviz.charts import sweep as sweep_charts
from kvviz.paged.result import describe
from kvviz.record.text import encode_prompt
from kvviz.sweep.rows import PPL_COLUMNS
from kvviz.ui import compare_view
from kvviz.ui import sweep as sweep_ui
from tests.app.test_chinese_pages import english_runs, page_text

PAGES = Path(__file__).resolve().parents[2] / "pages"
TIMEOUT = 300
NOT_TRANSLATED = "本页尚未翻译"
PROMPTS = "The capital of France is\nWater boils at"
CITATION = re.compile(r"\b[A-Z]\w+ et al\.")  # a paper cited by its authors: kept as written
# Text these pages show but other modules write, not checked here: a policy's description (its
# paper's English title kept) and the policy controls (translated by the policies' own work), and
# why a token was evicted (kvviz.record.why_evicted, "#0 “...” left the cache ...": not translated yet).
ELSEWHERE = re.compile(r"^(\*\*[\w+]+\*\* · |\\#\d+ “|策略|Policy|Budget|Keeps)")


def open_page(name: str, **link) -> AppTest:
    at = AppTest.from_file(str(PAGES / name), default_timeout=TIMEOUT)
    at.query_params["lang"] = "zh"
    for key, value in link.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert not any(NOT_TRANSLATED in i.value for i in at.info)
    return at


def english_left(at: AppTest) -> list:
    """The page's own text with three English words in a row."""
    own = [CITATION.sub("·", t) for t in page_text(at) if not ELSEWHERE.match(t)]
    return [(t, english_runs(t)) for t in own if english_runs(t)]


def chart_layouts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec)["layout"] for c in at.get("plotly_chart")]


def test_tradeoffs_opens_in_chinese(smollm):
    at = open_page("4_Tradeoffs.py")
    assert at.title[0].value == "权衡"
    assert [b.label for b in at.button if b.key and b.key.startswith("tradeoffs.preset.")][0] == "注意力汇聚点很重要"
    task = at.radio(key="_tradeoffs.task")
    assert task.label == "任务" and task.options[0] == "困惑度、KL、top-1" and task.value == "ppl"  # the value stays English
    assert at.text_input(key="_tradeoffs.ratios").label == "比例，以逗号分隔"
    assert not english_left(at), english_left(at)


def test_paged_custom_run_in_chinese(smollm):
    """A custom run of two prompts from a link: metrics, the step's sentences and the pool chart's
    title in Chinese, with the block counts the tokenizer gives."""
    at = open_page("5_Paged_Cache.py", scenario="custom", prompts=PROMPTS, block="4", blocks="16", new="2")
    assert at.title[0].value == "分页缓存" and at.subheader[0].value == "自定义提示词"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["请求数"] == "2" and metrics["抢占次数"] == "0"
    lengths = [len(encode_prompt(smollm.tokenizer, p, chat=False)) for p in PROMPTS.splitlines()]
    blocks = [-(-n // 4) for n in lengths]  # each prompt's blocks of 4 slots, taken at step 1
    text = "\n".join(m.value for m in at.markdown)
    assert "**第 1 步发生了什么**" in text
    assert f"r0 被接纳：{lengths[0]} 个 token" in text and f"r1 被接纳：{lengths[1]} 个 token" in text
    layouts = chart_layouts(at)
    assert layouts[0]["title"]["text"].startswith(f"第 1 步之后的池：16 个块中 {sum(blocks)} 个在用")
    assert layouts[2]["xaxis"]["title"]["text"] == "调度步"
    assert not english_left(at), english_left(at)
    # the same event, outside a Streamlit run: English (the CLI and JSON)
    event = {"kind": "admit", "request": "r0", "detail": {"tokens": lengths[0]}}
    assert describe(event) == f"r0 admitted: {lengths[0]} tokens"


def test_compare_run_in_chinese(smollm):
    """Two policies from a link, run at once: the outputs' header, the columns' metrics and both
    charts' titles and axes in Chinese; the summary table keeps its English columns under Chinese labels."""
    at = open_page("3_Compare.py", example="Custom", prompt="The capital of France is", n="2", p1="h2o:budget=4", p2="window:budget=4",
                   same="0", new="1", step="1")
    assert at.title[0].value == "策略对比"
    assert at.subheader[0].value == "2 种策略，提示词“自定义”"  # the sidebar's "Custom", in Chinese
    labels = [m.label for m in at.metric]
    assert labels.count("K/V 占用") == 2 and labels.count("首次分歧") == 2
    memory, agreement = chart_layouts(at)
    assert memory["title"]["text"].startswith("每步占用的 K/V 缓存")
    assert memory["xaxis"]["title"]["text"] == "解码步" and agreement["yaxis"]["title"]["text"] == "KL（nats）"
    summary = [d for d in at.dataframe if "kv_bytes" in d.value.columns][0]
    assert "top-1 agreement" in summary.value.columns  # the data (and its CSV) stay English
    assert not english_left(at), english_left(at)


@pytest.fixture()
def chinese(monkeypatch):  # after kvviz.ui registered the session's language source (imported above)
    monkeypatch.setattr(i18n, "_language_source", lambda: "zh")


def test_the_best_policy_sentence_in_chinese(chinese):
    """describe_best's sentence with its numbers, as the Chinese page shows it."""
    row = {"series": "h2o", "ratio": 0.25, "budget": None, "kv_pct": 25.0, "ppl": 12.0, "kl_full": 0.5, "top1_agree": 0.75}
    text = sweep_charts.describe_best(row, "ppl", {"ppl": 10.0}, 30)
    assert text == ("在完整缓存 30% 的内存以内，困惑度最低的是 h2o，占用 25.0%（比例 0.25）：困惑度 12.00，完整缓存为 10.00（+20.0%），"
                    "平均 KL 0.500 nats，top-1 一致率 75%。")


def test_table_headers_in_chinese_data_in_english(chinese):
    """The Tradeoffs table and Compare's summary show Chinese headers over English columns (the CSV's)."""
    config = sweep_ui.column_config()
    assert set(PPL_COLUMNS) <= set(config)
    assert config["kv_bytes"]["label"] == "KV 字节数" and config["ppl"]["label"] == "困惑度" and config["policy"]["label"] == "策略"
    assert compare_view.summary_columns()["top-1 agreement"] == "top-1 一致率"
