"""More texts the pages show that come from core modules (issue 19): why a token was evicted, the
progress lines of running jobs, the sweep's number errors, the paged run's and the bundle's
errors, the file checks behind TraceError, the question-after PromptError, CaptureError, and the
budget notes a Live run saves. In a Chinese session they read in Chinese (expected texts written by
hand, the numbers from the same values); outside one they are the English text, byte for byte (the
CLI and the saved JSON)."""

from __future__ import annotations

import pytest
import torch

from kvviz import i18n
from kvviz.compare.run import FORCED_SUFFIX, Progress
from kvviz.model.attention_inputs import CaptureError, decoder_layers
from kvviz.paged.block_manager import BlockManager, PoolTooSmall
from kvviz.paged.run import PagedSettings
from kvviz.policies.spec import PolicySpec, budget_notes, saved_budget_notes, shown_budget_notes
from kvviz.record.checks import TraceError, check_int, check_object
from kvviz.record.question import question_start
from kvviz.record.text import PromptError
from kvviz.record.why_evicted import EvictionCell, EvictionReason
from kvviz.runs import bundle
from kvviz.sweep import run as sweep
from kvviz.sweep.job import SweepJob


@pytest.fixture
def chinese(monkeypatch):
    monkeypatch.setattr(i18n, "_language_source", lambda: "zh")


def reason(**changes) -> EvictionReason:
    """Token #5 "cat", evicted by h2o in 2 of 6 layer × KV heads (steps 3 and 4), scores 0.1 and
    0.3 against cuts 0.5 and 0.7: medians 0.2 and 0.6."""
    values = dict(position=5, token="cat", step=7, policy="h2o", by_recency=False,
                  cells=(EvictionCell(0, 1, 3, 0.1, 0.5), EvictionCell(2, 0, 4, 0.3, 0.7)), n_cells=6, budget=8, n_sink=0)
    return EvictionReason(**(values | changes))


def raised(kind, fn, *args, **kw) -> str:
    with pytest.raises(kind) as caught:
        fn(*args, **kw)
    return str(caught.value)


def test_why_evicted_in_chinese(chinese):
    assert reason().summary() == (
        "到第 7 步，#5 “cat” 已被移出 KV cache，涉及6 个（层 × KV 头）组合中的 2 个（最早在第 3 步）。"
        "在它被移出的位置，它的分数低于淘汰线：中位数 0.2，淘汰线为 0.6，即 h2o 在该步、该层该 KV 头中凭分数保留的最低分。")
    assert reason(policy="window", by_recency=True, n_sink=4).summary().endswith(
        "window 按新近程度驱逐，而不是按分数：没有可比较的分数。预算为每个 KV 头 8 个条目：前 4 个 token（attention sink）"
        "和最新的 4 个；更新的 token 填满这个窗口时，该 token 被移出。")
    assert reason(cells=()).summary() == "第 7 步时，#5 “cat” 仍保留在每一层的每个 KV 头中。"


def test_why_evicted_in_english_unchanged():
    assert reason().summary() == (
        "#5 “cat” left the cache in 2 of 6 layer × KV heads by step 7 (first at step 3). Where it left, its score was"
        " below the cut: median 0.2 against 0.6, the lowest score h2o kept on merit at that step in that layer and KV head.")
    assert reason(policy="window", by_recency=True, n_sink=4).summary().endswith(
        "window evicts by recency, not by a score: there is no score to compare. The budget holds 8 entries per KV head:"
        " the first 4 tokens (attention sinks) and the newest 4; this token left when newer tokens filled that window.")


def sweep_line() -> str:
    job = SweepJob(None, None, None)  # type: ignore[arg-type]  (only its progress is read)
    job.latest = sweep.Progress(done=2, total=5, label="h2o · 25%", elapsed_s=60.0)  # 30 s a run: 3 x 30 = 90 s left
    return job.running_progress()[1]


def sweep_labels() -> list[str]:
    """The labels of a passkey sweep's runs (saved in English) as the page shows them."""
    runs = [sweep.PlannedRun(None, [1], 4, "full", depth=0.5, length=256),
            sweep.PlannedRun(PolicySpec.parse("h2o:budget=32"), [1], 4, "h2o", depth=0.5, length=256)]
    return [sweep.shown_label(run.label) for run in runs]


def test_sweep_labels_in_chinese(chinese):
    assert sweep_labels() == ["完整缓存（参照） · 深度 0.5，256 个填充 token", "h2o · 每头 32 · 深度 0.5，256 个填充 token"]


def test_sweep_labels_in_english_unchanged():
    assert sweep_labels() == ["full cache (reference) · depth 0.5, 256 filler tokens", "h2o · 32/head · depth 0.5, 256 filler tokens"]


def test_progress_lines_in_chinese(chinese):
    assert Progress(1, 5, "p1.forced", "h2o · 25%" + FORCED_SUFFIX, 3, 32).line() == (
        "第 2 / 5 次运行：h2o · 25%，以完整缓存的输出 teacher forcing，3 / 32 个 token")
    assert Progress(0, 5, "full", "full cache", 0, 32).line() == "第 1 / 5 次运行：完整缓存，0 / 32 个 token"
    assert sweep_line() == "第 3 / 5 次运行：h2o · 25%；按目前的速度，大约还需 90 秒"


def test_progress_lines_in_english_unchanged():
    assert Progress(1, 5, "p1.forced", "h2o · 25%" + FORCED_SUFFIX, 3, 32).line() == (
        "Run 2 of 5: h2o · 25%, teacher-forced on the full cache's output, 3 / 32 tokens")
    assert sweep_line() == "Run 3 of 5: h2o · 25%; about 90 s left at the pace so far"


def errors() -> list[str]:
    """One error of each module, from inputs that must fail."""
    return [
        raised(ValueError, sweep.parse_numbers, "0.1, x", float, "Ratios"),
        raised(ValueError, sweep.parse_numbers, "8, 1.5", int, "Filler lengths"),
        raised(PromptError, sweep.ppl_tokens, None, "some text", 0, 32),
        raised(PoolTooSmall, PagedSettings(block_size=0).validate),
        raised(PoolTooSmall, BlockManager, 0, 16),
        raised(bundle.BundleError, bundle.load, '{"schema": "other"}'),
        bundle.page_of("sweep"),
        raised(TraceError, check_int, "7", "trace.step"),
        raised(TraceError, check_object, [], "the bundle"),
        raised(PromptError, question_start, None, [1, 2], "no blank line here"),
        raised(CaptureError, decoder_layers, torch.nn.Linear(2, 2)),
    ]


def test_errors_in_chinese(chinese):
    assert errors() == [
        "比例：应为以逗号分隔的数字，实际为「0.1, x」。",
        "填充长度：应为以逗号分隔的整数，实际为「8, 1.5」。",
        "上下文和续写都至少为 1 个 token（实际为 0 和 32）。",
        "块大小至少为 1，不能是 0。",
        "池中至少需要一个块，不能是 0。",
        "不是 kvviz 的运行包（schema 为 'other'，应为「kvviz.run_bundle」）。",
        "权衡",
        "trace.step 必须是整数，而不是一个字符串。",
        "the bundle 必须是一个 JSON 对象，而不是一个列表。",
        "要在压缩上下文之后再提问，请像 passkey 示例那样，把问题作为提示词的最后一段（前面空一行）。",
        "Linear：找不到 decoder 层（查找了 model.layers, model.language_model.layers, gpt_neox.layers, transformer.h, layers）。",
    ]


def test_errors_in_english_unchanged():
    assert errors() == [
        "Ratios: expected numbers separated by commas, got '0.1, x'.",
        "Filler lengths: expected whole numbers separated by commas, got '8, 1.5'.",
        "context and continuation must be at least 1 token (got 0 and 32).",
        "block size must be at least 1, not 0.",
        "the pool needs at least one block, not 0.",
        "Not a kvviz run bundle (schema 'other', expected 'kvviz.run_bundle').",
        "Tradeoffs",
        "trace.step must be a whole number, not a string.",
        "the bundle must be a JSON object, not a list.",
        "To ask the question after compressing the context, end the prompt with its question as the last paragraph"
        " (after a blank line), as the passkey example does.",
        "Linear: no decoder layers found (looked for model.layers, model.language_model.layers, gpt_neox.layers, transformer.h, layers).",
    ]


def test_budget_notes_saved_in_english_shown_in_chinese(chinese):
    spec = PolicySpec.parse("window:budget=9")
    english = "With 9 entries per layer and KV head, window keeps the 9 most recent tokens (the whole budget)."
    chinese_note = "每层每个 KV 头 9 个条目时，window 保留最近的 9 个 token（整个预算）。"
    assert [n.text for n in budget_notes(spec, 40)] == [chinese_note]  # the page's caption
    assert saved_budget_notes(spec, 40) == [english]  # the run's JSON
    assert i18n.current_language() == "zh"  # the session's language is back after the English notes
    assert shown_budget_notes(spec, 40, [english, "another note"]) == [chinese_note, "another note"]
