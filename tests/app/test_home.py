"""AppTest of the home page (app.py opens it through st.navigation) and of the shared sidebar it draws."""

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from kvviz.record import examples as data
from kvviz.ui import navigation

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TIMEOUT = 300  # the first run in a fresh process loads the model


@pytest.fixture()
def home(smollm):  # smollm: the weights cache is warm, so the app's own load takes seconds
    return AppTest.from_file(APP, default_timeout=TIMEOUT).run()


def _summary(at) -> dict:
    table = at.table[0].value
    return dict(zip(table.iloc[:, 0], table.iloc[:, 1]))


def test_home_runs_with_defaults_and_shows_the_model_summary(home):
    assert not home.exception
    assert not home.sidebar.error and not home.error
    summary = _summary(home)
    assert summary["Model"] == "SmolLM2-135M-Instruct.Q4_1"
    assert summary["Layers"] == "30"
    assert summary["Attention"] == "GQA (9 query heads share 3 KV heads)"
    if torch.cuda.is_available():  # bf16 on a GPU host
        assert summary["KV cache per token"].startswith("22.5 KiB")
    else:
        assert summary["KV cache per token"].startswith("45.0 KiB")
        assert summary["Device"] == "CPU (no GPU in use)"
        assert any("Running on CPU" in info.value for info in home.info)
    assert [m.value for m in home.metric][:2] == ["30", "9 / 3"]
    text = " ".join(m.value for m in home.markdown)
    text += " ".join(link.proto.label for link in home.get("page_link"))
    assert "KV cache" in text and "Attention explorer" in text and "Live policy" in text
    assert {link.proto.page for link in home.get("page_link")} == {p.url_path for p in navigation.PAGES}
    # every registered page is linked, and every page file is registered
    registered = {Path(p.path).name for p in navigation.PAGES + [navigation.HOME]}
    assert registered == {path.name for path in (Path(APP).parent / "pages").glob("*.py")}


def test_sidebar_defaults(home):
    assert home.sidebar.selectbox(key="_kvviz_prompt_name").value == data.CHAT_EXAMPLE
    assert home.sidebar.selectbox(key="_kvviz_device").value == "auto"
    assert home.sidebar.checkbox(key="_kvviz_chat::" + data.CHAT_EXAMPLE).value is True
    assert any(c.value == "37 tokens with the chat template" for c in home.sidebar.caption)


def test_a_bad_model_spec_shows_an_error_and_the_previous_model_keeps_working(home, monkeypatch):
    # an operator who lets visitors name any model (tests/app/test_shared_server.py: the default refuses)
    monkeypatch.setenv("KVVIZ_ALLOWED_MODELS", "*")
    monkeypatch.setenv("KVVIZ_ALLOW_LOCAL_PATHS", "1")
    home.sidebar.text_input(key="_kvviz_model_spec").set_value("/no/such/model.gguf").run()
    assert not home.exception
    errors = [e.value for e in home.sidebar.error]
    assert len(errors) == 1
    assert "No such file or directory: /no/such/model.gguf" in errors[0]
    assert "Still using SmolLM2-135M-Instruct.Q4_1" in errors[0]
    assert _summary(home)["Model"] == "SmolLM2-135M-Instruct.Q4_1"

    home.sidebar.text_input(key="_kvviz_model_spec").set_value("kvviz-no-such-org/no-model").run()
    assert not home.exception
    assert "kvviz-no-such-org/no-model" in home.sidebar.error[0].value
    # the app still works: another prompt can be picked
    home.sidebar.selectbox(key="_kvviz_prompt_name").set_value(data.CODE_EXAMPLE).run()
    assert not home.exception
    assert _summary(home)["Layers"] == "30"


def test_an_unavailable_device_shows_an_error(home, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    home.sidebar.selectbox(key="_kvviz_device").set_value("cuda").run()
    assert not home.exception
    assert "no CUDA GPU is available" in home.sidebar.error[0].value
    assert _summary(home)["Device"] == "CPU (no GPU in use)"
    home.sidebar.selectbox(key="_kvviz_device").set_value("auto").run()
    assert not home.sidebar.error


def test_passkey_controls_and_custom_prompt(home):
    home.sidebar.selectbox(key="_kvviz_prompt_name").set_value(data.PASSKEY_EXAMPLE).run()
    assert not home.exception
    _, key = data.passkey_prompt(data.DEFAULT_PASSKEY_FILLER, data.DEFAULT_PASSKEY_DEPTH, seed=0)
    assert any(key in c.value for c in home.sidebar.caption)
    home.sidebar.slider(key="_kvviz_passkey_filler").set_value(2000).run()
    home.sidebar.number_input(key="_kvviz_passkey_seed").set_value(7).run()
    _, key7 = data.passkey_prompt(2000, data.DEFAULT_PASSKEY_DEPTH, seed=7)
    assert any(key7 in c.value for c in home.sidebar.caption)
    assert home.session_state["kvviz_passkey_filler"] == 2000

    home.sidebar.selectbox(key="_kvviz_prompt_name").set_value("Custom").run()
    home.sidebar.text_area(key="_kvviz_custom_prompt").set_value("   ").run()
    assert not home.exception
    assert "The prompt is empty" in home.sidebar.warning[0].value
