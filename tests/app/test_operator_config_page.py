"""AppTest: a bad value in the operator's config file is said once in the sidebar, and the page
keeps serving with that setting's default (issue 21)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGES = Path(__file__).resolve().parents[2] / "pages"


def test_a_bad_config_value_is_said_once_and_the_page_keeps_serving(smollm, tmp_path, monkeypatch):
    path = tmp_path / "kvviz.toml"
    path.write_text("[kvviz]\nmax_new_tokens = 'lots'\nmax_prompt_tokens = 20\n")
    monkeypatch.setenv("KVVIZ_CONFIG", str(path))
    at = AppTest.from_file(str(PAGES / "2_Live_Policy.py"), default_timeout=300).run()
    assert not at.exception
    (warning,) = [w.value.replace("\\", "") for w in at.sidebar.warning]
    assert warning == "kvviz.toml: [kvviz] max_new_tokens='lots' is not a whole number. The default is used."
    (error,) = [e.value for e in at.error]  # the good value beside it applies: the 37-token prompt is over 20
    assert error.startswith("The prompt has 37 tokens; this server runs prompts of at most 20")
