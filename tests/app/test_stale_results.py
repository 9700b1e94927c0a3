"""Issue 24: a finished result whose settings differ from the controls now is marked stale, with
the same warning on Live, Compare and the Paged cache (kvviz.ui.stale), naming exactly what changed;
changing it back, or running the new settings, removes the mark. AppTest on the real SmolLM2 with
tiny runs (a few new tokens)."""

from __future__ import annotations

import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

from kvviz.ui import stale

PAGES = Path(__file__).resolve().parents[2] / "pages"
TIMEOUT = 600
STALE_HEAD = "This result is from earlier settings. The controls above now say: "


def stale_marks(at: AppTest) -> list[str]:
    """The stale warnings' texts, markdown escapes removed (what a person reads)."""
    return [re.sub(r"\\(.)", r"\1", w.value) for w in at.warning if w.value.startswith(STALE_HEAD)]


def changed_part(at: AppTest) -> str:
    (mark,) = stale_marks(at)
    assert mark.endswith(". Press **Run** to run them.")
    return mark[len(STALE_HEAD) : -len(". Press **Run** to run them.")]


def test_the_message_is_lives_wording():
    assert stale.message(["new tokens 4 → 5"]) == (
        "This result is from earlier settings. The controls above now say: new tokens 4 → 5. Press **Run** to run them."
    )
    assert stale.count_change("New tokens", 4, 4) == [] and stale.count_change("New tokens", 4, None) == []
    assert stale.switch_change("Sample", False, True) == ["Sample on"] and stale.switch_change("Sample", True, True) == []


def test_compare_marks_a_changed_control_and_unmarks_it(smollm):
    at = AppTest.from_file(str(PAGES / "3_Compare.py"), default_timeout=TIMEOUT)
    for key, value in {"n": "2", "p1": "h2o:recent=2,budget=8", "p2": "window:budget=8", "same": "0", "new": "2", "step": "1"}.items():
        at.query_params[key] = value
    at.run()  # a link to a view (a step): it runs once with the controls it set
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert at.session_state["compare.result"].settings.max_new_tokens == 2
    assert stale_marks(at) == []  # opened from a link whose settings are the controls: not stale

    bundle = at.session_state["compare.result"].to_bundle(step=1).to_json()
    fresh = AppTest.from_file(str(PAGES / "3_Compare.py"), default_timeout=TIMEOUT).run()  # default controls: 3 other policies
    fresh.file_uploader(key="compare.result.upload").set_value(("run.json", bundle.encode(), "application/json")).run()
    assert not fresh.exception and not fresh.error, [e.value for e in fresh.error]
    assert fresh.session_state["compare.result"].settings.policies[1].to_text() == "window:budget=8"
    assert stale_marks(fresh) == []  # the bundle set the controls to its settings
    fresh.radio(key="_compare.n").set_value(3).run()
    assert changed_part(fresh).startswith("Policies 2 → 3; p3 is **")

    new_tokens = at.slider(key="_compare.new_tokens")
    new_tokens.set_value(3).run()
    assert changed_part(at) == "New tokens 2 → 3"
    at.checkbox(key="_compare.question_after").check().run()
    assert changed_part(at) == "New tokens 2 → 3; Question after the context on"
    at.checkbox(key="_compare.question_after").uncheck().run()
    at.slider(key="_compare.new_tokens").set_value(2).run()
    assert stale_marks(at) == []  # back to the settings of the result

    at.number_input(key="cmp2.budget").set_value(9).run()
    assert changed_part(at) == "p2 is **" + at.session_state["compare.result"].settings.policies[1].__class__.parse("window:budget=9").label() + "**"
    at.button(key="compare.run").click().run()
    assert not at.exception and not at.error
    assert at.session_state["compare.result"].settings.policies[1].budget == 9
    assert stale_marks(at) == []  # a fresh run of the new setting


def test_paged_marks_a_custom_run_when_the_form_changes(smollm):
    page = str(PAGES / "5_Paged_Cache.py")
    at = AppTest.from_file(page, default_timeout=TIMEOUT).run()
    at.text_area(key="_paged.prompts").set_value("The capital of France is\nWater boils at")
    at.number_input(key="_paged.block_size").set_value(2)
    at.number_input(key="_paged.max_new_tokens").set_value(2)
    at.button(key="paged.custom_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert stale_marks(at) == []

    at.number_input(key="_paged.block_size").set_value(4).run()
    assert changed_part(at) == "Block size 2 → 4"
    at.checkbox(key="_paged.prefix_caching").uncheck().run()
    assert changed_part(at) == "Block size 2 → 4; Prefix caching off"
    at.checkbox(key="_paged.prefix_caching").check()
    at.number_input(key="_paged.block_size").set_value(2).run()
    assert stale_marks(at) == []  # back to the run's settings

    fresh = AppTest.from_file(page, default_timeout=TIMEOUT)  # the run's link in a new session: the form is the run's
    for key in at.query_params:
        fresh.query_params[key] = at.query_params[key]
    fresh.run()
    assert not fresh.exception and fresh.session_state["paged.run"][1].block_size == 2
    assert stale_marks(fresh) == []

    at.number_input(key="_paged.max_new_tokens").set_value(3).run()
    assert changed_part(at) == "New tokens 2 → 3"
    at.button(key="paged.custom_run").click().run()
    assert not at.exception and not at.error
    assert max(len(r["generated_token_ids"]) for r in at.session_state["paged.run"][1].requests) == 3
    assert stale_marks(at) == []  # a fresh run of the new setting


def test_tradeoffs_keeps_its_sweep_marked_when_a_control_changes(smollm):
    at = AppTest.from_file(str(PAGES / "4_Tradeoffs.py"), default_timeout=TIMEOUT).run()
    at.text_area(key="_tradeoffs.policies").set_value("window")
    at.text_input(key="_tradeoffs.ratios").set_value("0.5")
    at.number_input(key="_tradeoffs.context").set_value(16)
    at.number_input(key="_tradeoffs.continuation").set_value(4).run()
    at.button(key="tradeoffs.run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.dataframe[0].value) == 1 and stale_marks(at) == []

    at.number_input(key="_tradeoffs.continuation").set_value(5).run()
    assert changed_part(at) == "Continuation (forced tokens) 4 → 5"
    assert len(at.dataframe[0].value) == 1  # the earlier sweep stays on screen, marked
    at.text_input(key="_tradeoffs.ratios").set_value("0.25").run()
    assert changed_part(at) == "Ratios 0.5 → 0.25; Continuation (forced tokens) 4 → 5"
    at.text_input(key="_tradeoffs.ratios").set_value("0.5")
    at.number_input(key="_tradeoffs.continuation").set_value(4).run()
    assert stale_marks(at) == []  # back to the sweep's settings

    at.number_input(key="_tradeoffs.continuation").set_value(5).run()
    at.button(key="tradeoffs.run").click().run()
    assert not at.exception and not at.error
    assert at.session_state["tradeoffs.shown"][1].settings.continuation == 5
    assert stale_marks(at) == []  # a fresh sweep of the new setting

