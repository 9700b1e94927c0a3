"""The policy controls opened with lang=zh (no model: the controls alone): the picker's options
(name · family), the explanation's summary, a parameter's help, the budget's radio, slider and
caption, the companion picker are Chinese; the widgets' values stay English (the spec they build
is the English one); the same controls in English are the English text."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from kvviz import policies
from kvviz.i18n import translations
from kvviz.ui.policy_controls import KEEP


def controls():
    import streamlit as st

    from kvviz.ui.policy_controls import policy_controls

    spec = policy_controls("p", prompt_len=40)
    st.text(f"spec: {spec}")


def opened(lang: str | None, policy: str | None = None) -> AppTest:
    at = AppTest.from_function(controls, default_timeout=60)
    if lang:
        at.query_params["lang"] = lang
    if policy:  # AppTest's set_value would format the option outside the session, in English
        at.session_state[KEEP + "p.name"] = policy
    return at.run()


def test_policy_controls_in_chinese_and_in_english():
    at = opened("zh")
    assert not at.exception, [e.message for e in at.exception]
    picker = at.selectbox(key="p.name")
    assert picker.label == "策略" and picker.value == "h2o" and "h2o · 驱逐" in picker.options and "kivi · 量化（存储）" in picker.options
    about = " ".join(m.value for m in at.markdown)
    h2o = policies.get("h2o")
    assert "**h2o** · 驱逐。每个条目的得分是它迄今为止从所有查询收到的注意力之和" in about and f"*论文：* [{h2o.paper}]" in about
    recent = at.number_input(key="p.h2o.recent")
    assert recent.label == "recent" and recent.help == translations("zh").gettext(h2o.params()["recent"].help)
    budget = at.radio(key="p.budget_mode")
    assert budget.label == "预算" and budget.options == ["占提示词的比例", "每个 KV 头的条目数"]
    assert budget.value == "fraction of the prompt"  # the widget's value stays English
    assert at.slider(key="p.ratio").label == "比例（保留的提示词占比）"
    assert "每层每个 KV 头保留 40 个提示词 token 中的 10 个。" in [c.value for c in at.caption]
    assert at.text[0].value == "spec: h2o:ratio=0.25"

    at = opened("zh", "snapkv")  # a selector: a store may compose with it
    companion = at.selectbox(key="p.snapkv.companion")
    assert companion.label == "组合存储方式（保留的条目如何存放）" and companion.options[0] == "无" and companion.value == "none"

    english = opened(None)
    assert english.selectbox(key="p.name").label == "Policy" and "h2o · eviction" in english.selectbox(key="p.name").options
    assert english.radio(key="p.budget_mode").options == ["fraction of the prompt", "entries per KV head"]
    assert "Keeps 10 of 40 prompt tokens per layer and KV head." in [c.value for c in english.caption]


def test_picking_a_policy_and_a_budget_mode_in_chinese():
    """AppTest formats a picked option after the script run, outside the session: the controls'
    format functions are bound to the run's language (kvviz.i18n.bound), so picking works in Chinese."""
    at = opened("zh")
    at.selectbox(key="p.name").set_value("snapkv").run()
    assert not at.exception, [e.message for e in at.exception]
    at.radio(key="p.budget_mode").set_value("entries per KV head").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="p.name").value == "snapkv" and at.text[0].value.startswith("spec: snapkv:budget=")
