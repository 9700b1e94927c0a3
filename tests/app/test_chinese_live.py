"""The Live policy page with lang=zh: as it opens, and showing a run (reopened from the run store
through its link, as after a restart), its own text is Chinese: controls, tabs, metrics, the token
legend, the run details, chart titles and axes (numbers checked by hand). Without lang= the same
run reads in English, as before."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz import i18n
from kvviz.live import run as live_run
from kvviz.live.job import LiveJob
from kvviz.record.examples import PRESETS
from kvviz.record.text import cut_character_note
from kvviz.runtime.jobs import waiting_line
from tests.app.test_chinese_pages import english_runs, page_text

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "2_Live_Policy.py")
TIMEOUT = 300
BUDGET, NEW_TOKENS = 4, 3
# Text the Live page shows but other modules write (the policy controls: a policy's description,
# whose paper line keeps the paper's English title, and its budget notes, also copied into a
# request): translated by the policies' own work, not checked here.
ELSEWHERE = re.compile(r"^(\*\*\w+\*\* · |With \d+ entr(y|ies) per layer and KV head, )")


@pytest.fixture(scope="module")
def stored_run(smollm):
    """A short h2o run with the comparison, in the run store (the page reopens it from its link)."""
    request = live_run.prepare(smollm.tokenizer, "The capital of France is", chat=False, spec=f"h2o:recent=2,budget={BUDGET}",
                               max_new_tokens=NEW_TOKENS, model_name=smollm.summary.name)
    job = LiveJob(smollm.model, smollm.tokenizer, request).start()
    assert job.wait(TIMEOUT) and job.error is None, job.error
    return request


def open_page(run_id: str | None = None, lang: str | None = "zh") -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    if lang:
        at.query_params["lang"] = lang
    if run_id:
        at.query_params["run"] = run_id
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def english_left(at: AppTest) -> list:
    own = [t for t in page_text(at) if not ELSEWHERE.match(t)]
    return [(t, english_runs(t)) for t in own if english_runs(t)]


def test_the_live_page_opens_in_chinese(smollm):
    at = open_page()
    assert at.title[0].value == "实时策略"
    assert not any("尚未翻译" in i.value for i in at.info)  # translated: no notice
    assert "按 **运行** 用该策略生成。" in at.info[-1].value
    assert at.slider(key="_live.new_tokens").label == "新 token 数" and at.checkbox(key="_live.compare").label == "与完整缓存对比"
    assert at.button(key="live.run").label == "▶ 运行" and at.button(key="live.stop").label == "■ 停止"
    assert {"一键演示", "打开已保存的 trace"} <= {e.label for e in at.expander}
    assert not english_left(at)


def test_a_run_reads_in_chinese_with_numbers_intact(stored_run):
    at = open_page(stored_run.run_id)
    assert not at.error, [e.value for e in at.error]
    assert [t.label for t in at.tabs] == ["Token", "保留情况", "输出对比完整缓存", "内存", "运行详情"]
    assert not english_left(at)
    labels = [m.label for m in at.metric]
    last = NEW_TOKENS - 1
    assert labels[:4] == ["已生成", "整次运行", f"第 {last} 步的 KV cache", "首次分歧"] and f"第 {last} 步持有的 K/V" in labels
    # charts built in the Chinese session: titles and axes, the numbers by hand (h2o holds its budget
    # in every layer and KV head; the full cache holds the prompt and the tokens generated before the step)
    layouts = [json.loads(c.proto.spec)["layout"] for c in at.get("plotly_chart")]
    titles = [layout.get("title", {}).get("text", "") for layout in layouts]
    full = stored_run.prompt_len + last
    occupancy = f"第 {last} 步的缓存占用：每个 KV 头 {BUDGET:.1f} / {full} 个条目（{100 * BUDGET / full:.0f}%）"
    assert occupancy in titles
    assert layouts[titles.index(occupancy)]["xaxis"]["title"]["text"] == "层"
    assert any(t.startswith("随时间的保留情况：token × 解码步（所有层和 KV 头）") for t in titles)
    # the token view's legend: state names in Chinese, counts summing to the tokens drawn
    legend = next(h.proto.body for h in at.html if '<div class="kvviz-legend"' in h.proto.body)
    counts = dict(re.findall(r'aria-hidden="true"[^>]*>Ab</span> ([^<]+)<b> (\d+)</b>', legend))
    assert "最近窗口" in counts and "下一个 token" in counts
    assert sum(map(int, counts.values())) == full + 1  # every position up to the step's next token


def test_the_same_run_in_english_is_unchanged(stored_run):
    at = open_page(stored_run.run_id, lang=None)
    assert at.title[0].value == "Live policy"
    assert [t.label for t in at.tabs] == ["Tokens", "Retention", "Output vs full cache", "Memory", "Run details"]
    assert at.metric[0].label == "Generated" and at.metric[0].value == f"{NEW_TOKENS} tokens"
    assert any(t.startswith(f"Cache occupancy at step {NEW_TOKENS - 1}: {BUDGET:.1f} of ")
               for t in (json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")))


def test_messages_the_page_reads_from_elsewhere_follow_the_session(monkeypatch):
    """Written outside the page (the run queue, the U+FFFD note, a Stop's notice, the demos), shown
    by it: Chinese in a zh session, the English they always had outside one (the CLI, JSON)."""
    monkeypatch.setattr(i18n, "_language_source", lambda: "zh")
    assert [waiting_line(n) for n in (0, 1, 3)] == ["排队中：下一个就是你的", "排队中：你前面还有 1 个运行", "排队中：你前面还有 3 个运行"]
    assert cut_character_note("巴黎\ufffd").startswith("输出以 \ufffd（U+FFFD）结尾：")
    assert i18n._(live_run.STOPPED_IN_PREFILL).startswith("在模型读取提示词（prefill）时")
    assert all(i18n._(name).startswith("Pass key：") for name in PRESETS)
    monkeypatch.setattr(i18n, "_language_source", lambda: None)
    assert [waiting_line(n) for n in (0, 1, 3)] == ["Waiting in the queue: yours is next", "Waiting in the queue: 1 run ahead of yours",
                                                  "Waiting in the queue: 3 runs ahead of yours"]
    assert cut_character_note("Paris\ufffd").startswith("The output ends in \ufffd (U+FFFD): generation stopped partway")
    assert cut_character_note("Paris") is None
