"""A link value that cannot be used (issue 24: new=0, ratio=5, budget=-1, policy=nosuch) opens the
page with a notice that names the parameter and the value the page uses instead, on the pages a
link reopens; the notice stays while the visitor is on that page (a rerun does not hide it) and
is gone on another page."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


def notices(at: AppTest) -> str:
    return " ".join(w.value.replace("\\", "") for w in at.sidebar.warning)  # markdown escapes off


def opened(page: str, **params) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / page), default_timeout=600)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_live_link_values_named_with_what_is_used(smollm):
    at = opened("2_Live_Policy.py", new="0", policy="h2o:ratio=5")
    shown = at.slider(key="_live.new_tokens").value  # what the page really uses, read off the widget
    text = notices(at)
    assert f"link setting 'new' ignored: 0 is outside [1, 256]; the page uses {shown} instead." in text
    assert "link setting 'policy' ignored: h2o: ratio must be at most 1.0, not 5.0; the page uses h2o" in text
    at.run()  # any rerun (a click elsewhere, a run finishing) keeps them in view
    assert notices(at) == text


def test_policy_link_values_on_paged_and_compare(smollm):
    paged = opened("5_Paged_Cache.py", policy="h2o:budget=-1", n="9", scenario="nosuch")
    text = notices(paged)
    assert "link setting 'policy' ignored: h2o: budget must be at least 1, not -1; the page uses full" in text
    assert "link setting 'n' ignored: 9 is outside [1, 8]; the page uses 1 instead." in text
    assert "link setting 'scenario' ignored: 'nosuch' is not one of the choices; the page uses no scenario" in text

    compare = opened("3_Compare.py", p2="nosuch", n="9", step="-3")
    text = notices(compare)
    assert "link setting 'step' ignored: -3 is outside [0, 128]; the page uses no step (a run opens at its last) instead." in text
    assert "compare.autorun" not in compare.session_state or not compare.session_state["compare.autorun"]  # no run for it
    assert compare.radio(key="_compare.n").value == 3
    assert "link setting 'n' ignored: '9' is not one of the choices; the page uses 3 instead." in text
    assert "link setting 'p2' ignored: Unknown policy 'nosuch'" in text


def test_a_notice_leaves_with_its_page(smollm):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.switch_page("pages/5_Paged_Cache.py")
    at.query_params["n"] = "0"
    at.run()
    assert "link setting 'n' ignored" in notices(at)
    at.switch_page("pages/0_Home.py").run()
    assert not at.exception and "link setting" not in notices(at)
