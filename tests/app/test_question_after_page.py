"""The Live page's "Question after the context" switch: a prompt without a question paragraph gets
one message; a passkey prompt's request carries where its question starts."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from kvviz.live import run as live_run
from kvviz.record.examples import passkey_prompt
from kvviz.record.question import question_start
from kvviz.record.text import encode_prompt

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "2_Live_Policy.py")


def test_a_prompt_without_a_question_paragraph_gets_one_message(smollm):
    at = AppTest.from_file(PAGE, default_timeout=600).run()
    at.selectbox(key="live.name").set_value("snapkv").run()
    at.checkbox(key="_live.question_after").set_value(True)
    at.button(key="live.run").click().run()
    assert not at.exception, at.exception
    assert any("last paragraph" in e.value for e in at.error), [e.value for e in at.error]


def test_a_passkey_request_knows_where_its_question_starts(smollm):
    text, key = passkey_prompt(40, 0.5)
    tok = smollm.tokenizer
    request = live_run.prepare(tok, text, chat=True, spec="snapkv:budget=24", question_after=True, passkey=key)
    ids = encode_prompt(tok, text, chat=True)
    assert request.question_at == question_start(tok, ids, text) and tok.decode(ids[request.question_at:]).startswith("What is")
    assert any("compressed alone" in n for n in request.notes)
    assert live_run.LiveRequest.from_dict(request.to_dict()).question_at == request.question_at
    plain = live_run.prepare(tok, text, chat=True, spec="snapkv:budget=24")
    assert plain.question_at is None


def test_tradeoffs_draws_each_policy_with_and_before_its_question(smollm):
    from kvviz.policies.params import ratio_budget

    at = AppTest.from_file(str(Path(PAGE).with_name("4_Tradeoffs.py")), default_timeout=600).run()
    at.radio(key="_tradeoffs.task").set_value("passkey").run()
    at.text_area(key="_tradeoffs.policies").set_value("snapkv:window=8")
    at.text_input(key="_tradeoffs.ratios").set_value("0.25")
    at.text_input(key="_tradeoffs.depths").set_value("0.5")
    at.text_input(key="_tradeoffs.lengths").set_value("40")
    at.radio(key="_tradeoffs.question").set_value("both").run()
    at.button(key="tradeoffs.run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert list(table["series"]) == ["snapkv:window=8", "snapkv:window=8 · question after"]
    text, _ = passkey_prompt(40, 0.5)
    ids = encode_prompt(smollm.tokenizer, text, chat=True)
    q = question_start(smollm.tokenizer, ids, text)
    assert list(table["budget"]) == [ratio_budget(0.25, len(ids)), ratio_budget(0.25, q)]  # the ratio is of the context
    assert at.query_params["question"] == "both"
