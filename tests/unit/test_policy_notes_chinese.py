"""The budget notes and the policy errors a page shows, in a Chinese session (issue 19): built from
placeholders, so the numbers and parameter names of the English note come back in the Chinese one,
and a policy's ``others`` (an attributive phrase in Chinese) sits before 条目. Outside a session
they are the English text, byte for byte (the CLI prints them)."""

from __future__ import annotations

import pytest

from kvviz import i18n
from kvviz.policies import PolicyError
from kvviz.policies.spec import PolicySpec, budget_notes


def notes(text: str, prompt_len: int) -> list[tuple[str, str]]:
    return [(n.level, n.text) for n in budget_notes(PolicySpec.parse(text), prompt_len)]


def error(text: str, prompt_len: int = 40) -> str:
    with pytest.raises(PolicyError) as caught:
        PolicySpec.parse(text).resolve_budget(prompt_len)
    return str(caught.value)


@pytest.fixture
def chinese(monkeypatch):
    monkeypatch.setattr(i18n, "_language_source", lambda: "zh")


def test_budget_notes_in_chinese(chinese):
    # 30 = 2 sinks (n_global) + 3 blocks x 4 + a window of 16: the rest 12 are the random blocks
    assert notes("sparse_pattern:n_global=2,block_size=4,random_blocks=3,budget=30", 40) == [("info", (
        "每层每个 KV 头 30 个条目时，sparse_pattern 保留前 2 个 token（n_global）和最近的 16 个 token（预算的其余部分），"
        "以及其余 12 个位于随机块（random_blocks × block_size）中的条目。"))]
    assert notes("snapkv:window=8,budget=20", 100) == [("info", "每层每个 KV 头 20 个条目时，snapkv 保留提示词的最后 8 个 token（window），以及其余 12 个按其得分选出的条目。")]
    assert notes("window:budget=9", 40) == [("info", "每层每个 KV 头 9 个条目时，window 保留最近的 9 个 token（整个预算）。")]
    over = notes("h2o:recent=16,budget=9", 40)
    assert over[1] == ("warning", "recent = 16 要求保护的条目多于预算所能容纳的数量（每层每个 KV 头 9 个）：h2o 只保护 9 个，"
                                  "不保留任何累积注意力最高的（heavy hitters）条目。请提高预算或降低 recent。")
    assert notes("h2o:recent=16,budget=16", 40)[1][1].startswith("recent = 16 占满了整个预算（每层每个 KV 头 16 个条目）")


def test_policy_errors_in_chinese(chinese):
    assert error("h2o:budget=500") == "h2o：预算 500 大于提示词长度（40 个 token）。"
    assert error("streaming_llm:budget=3") == "streaming_llm：预算 3 在 4 个 sink token 之后没有留下最近窗口；请提高预算或降低 n_sink。"
    assert error("quant:bits=3") == "quant：bits 必须是 8, 4, 2 之一，而不是 3。"
    assert error("h2o:recent") == "'h2o:recent'：参数格式为 key=value，以逗号分隔（收到的是 'recent'）。"


def test_the_same_in_english_outside_a_session():
    assert notes("h2o:recent=8,budget=9", 40) == [("info", (
        "With 9 entries per layer and KV head, h2o keeps the 8 most recent tokens (recent), and the 1 other entry"
        " with the highest accumulated attention (heavy hitters)."))]
    assert error("h2o:budget=500") == "h2o: budget 500 is larger than the prompt (40 tokens)."
    assert error("quant:bits=3") == "quant: bits must be one of 8, 4, 2, not 3."
    assert error("h2o:recent=x") == "h2o: recent must be a int, not 'x'."
