"""Policies in Chinese (issue 19): a policy's summary, family, ``others`` and every parameter's help
are marked with ``N_`` where the policy defines them, so the msgid is the raw attribute (line breaks
and indentation included), and the zh catalog translates it; the controls look the raw text up and
only then join its whitespace. English stays the text as written, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_file

from kvviz import i18n, policies
from kvviz.policies.duo_attention import streaming_subject
from kvviz.policies.spec import PolicySpec, budget_notes
from kvviz.ui import policy_controls

ZH = i18n.translations("zh")
POLICY_DIR = Path(policies.__file__).resolve().parent


def marked() -> set[str]:
    """Every msgid the policy package marks (as ``make messages`` extracts them)."""
    keywords = {**DEFAULT_KEYWORDS, "N_": None}
    found: set[str] = set()
    for path in sorted(POLICY_DIR.glob("*.py")):
        for _lineno, message, _comments, _context in extract_from_file("python", str(path), keywords=keywords):
            found.update(message if isinstance(message, tuple) else (message,))
    return found


def policy_texts(name: str) -> dict[str, str]:
    """What the controls show of one policy, by where it comes from: 'summary', 'family', 'others',
    'help of <param>' (a policy without ``others`` has none)."""
    cls = policies.get(name)
    texts = {"summary": cls.summary, "family": cls.family}
    if getattr(cls, "others", ""):
        texts["others"] = cls.others
    texts.update({f"help of {param}": spec.help for param, spec in cls.params().items()})
    return texts


def test_a_summary_and_a_parameter_help_come_back_in_chinese():
    h2o = policies.get("h2o")
    summary = ZH.gettext(h2o.summary)  # the raw attribute is the msgid
    assert summary.startswith("每个条目的得分是它迄今为止从所有查询收到的注意力之和") and "`H2OKVCache_LayerWise`" in summary
    assert ZH.gettext(h2o.params()["recent"].help).startswith("始终保留的最新 token 数（论文中的局部窗口）")
    assert ZH.gettext(policies.get("kivi").params()["bits"].help) == "每个编码的位数：2 或 4。"
    assert ZH.gettext(h2o.others) == "累积注意力最高的（heavy hitters）" and ZH.gettext(h2o.family) == "驱逐"
    # English: the text as written
    assert i18n.translations("en").gettext(h2o.summary) == h2o.summary and "\n    " in h2o.summary


def test_every_policy_text_is_marked_and_translated():
    found = marked()
    unmarked, untranslated = [], []
    for name in policies.registry():
        if policies.plugin_source(name):  # a plugin's text is its author's
            continue
        for where, text in policy_texts(name).items():
            if text not in found:
                unmarked.append(f"{name} {where}: {text[:60]!r}")
            elif ZH.gettext(text) == text:
                untranslated.append(f"{name} {where}: {text[:60]!r}")
    assert not unmarked and not untranslated, (
        "not marked with N_ where defined:\n" + "\n".join(unmarked) + "\nno Chinese in the catalog:\n" + "\n".join(untranslated))


def test_the_controls_text_in_both_languages(monkeypatch):
    h2o = policies.get("h2o")
    # English: what the controls showed before they were marked
    joined = " ".join(h2o.summary.split())
    assert policy_controls.describe_policy("h2o") == f"**h2o** · eviction. {joined}\n\n*Paper:* [{h2o.paper}]({h2o.paper_url})"
    assert policy_controls.policy_label("kivi") == "kivi · quantization (store)"
    monkeypatch.setattr(i18n, "_language_source", lambda: "zh")
    text = policy_controls.describe_policy("h2o")
    about, paper = text.split("\n\n")
    assert about.startswith("**h2o** · 驱逐。每个条目的得分") and "\n" not in about and "  " not in about
    assert paper == f"*论文：* [{h2o.paper}]({h2o.paper_url})"  # the paper's title stays as written
    assert policy_controls.policy_label("kivi") == "kivi · 量化（存储）"
    assert policy_controls.budget_caption(3, 12) == "每层每个 KV 头保留 12 个提示词 token 中的 3 个（25%）。"


def test_duo_attention_notes_name_its_streaming_heads():
    english = [n.text for n in budget_notes(PolicySpec.parse("duo_attention:budget=20"), 100)]
    assert english[0] == ("With 20 entries per layer and KV head, duo_attention's streaming heads (50% of all KV heads) keep"
                          " the first 4 tokens (n_sink) and the 16 most recent tokens (the rest of the budget).")
    subject = ZH.gettext("duo_attention's streaming heads ({share} of all KV heads)").format(share="50%")
    assert subject == "duo_attention 的流式头（占全部 KV 头的 50%）"
    # another language's note: the policy's first name becomes the subject, once
    assert streaming_subject("每层每个 KV 头 20 个条目时，duo_attention 保留 4 个 sink；duo_attention 其余……", subject) == (
        "每层每个 KV 头 20 个条目时，duo_attention 的流式头（占全部 KV 头的 50%） 保留 4 个 sink；duo_attention 其余……")


def test_a_wrapped_chinese_text_is_joined_without_spaces_and_registry_errors_translate(monkeypatch):
    from kvviz import i18n, policies
    from kvviz.policies import PolicyError
    from kvviz.ui.policy_controls import _joined

    assert _joined("每个条目。\n    之后 token 的 KV cache，\n    下一句") == "每个条目。之后 token 的 KV cache，下一句"
    assert _joined("Each entry's\n    score is") == "Each entry's score is"
    monkeypatch.setattr(i18n, "_language_source", lambda: "zh")
    with pytest.raises(PolicyError, match="^“h2o”没有参数“nosuch”。$"):
        policies.build("h2o", {"nosuch": 1})
    monkeypatch.setattr(i18n, "_language_source", None)
    with pytest.raises(PolicyError, match="^Unknown parameter 'nosuch' for 'h2o'.$"):
        policies.build("h2o", {"nosuch": 1})
