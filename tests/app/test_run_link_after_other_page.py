"""The Live page's ?run= comes back with its result after a visit to another page (issue 24: a
page switch empties the URL and the link then named no run)."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def test_run_id_back_in_the_url(smollm):
    at = AppTest.from_file(APP, default_timeout=600)
    at.switch_page("pages/2_Live_Policy.py").run()
    at.slider(key="_live.new_tokens").set_value(2)
    at.checkbox(key="_live.compare").set_value(False)
    at.button(key="live.run").click().run()
    assert not at.exception
    run_id = at.session_state["live.result"].request.run_id
    assert at.query_params["run"] in (run_id, [run_id])
    at.switch_page("pages/0_Home.py")
    at.query_params.clear()  # what the browser's page switch does to the address bar
    at.run()
    assert "run" not in at.query_params
    at.switch_page("pages/2_Live_Policy.py").run()
    assert not at.exception and at.query_params["run"] in (run_id, [run_id])
