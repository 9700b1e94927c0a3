"""Settings live in the URL: a link opens the page with them, bad values in a link are ignored
with a message, and the address bar follows the widgets."""

import base64
import zlib
from pathlib import Path

from streamlit.testing.v1 import AppTest

from kvviz.record import examples as data
from kvviz.ui import state

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def test_decode_and_encode_by_hand():
    assert state.decode("7", 0) == 7 and state.decode("0.5", 1.0) == 0.5
    assert state.decode("off", True) is False and state.encode(True) == "1"
    assert state.decode("3,9", (0, 0)) == (3, 9) and state.encode((3, 9)) == "3,9"
    assert state.decode("b", "a", options=["a", "b"]) == "b"
    for text, default, options in (("x", 0, None), ("nan", 1.0, None), ("maybe", True, None), ("c", "a", ["a", "b"]), ("1", (0, 0), None)):
        try:
            state.decode(text, default, options)
        except ValueError:
            continue
        raise AssertionError(f"{text!r} should not decode like {default!r}")


def test_a_link_opens_with_its_settings(smollm):
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["example"] = data.PASSKEY_EXAMPLE
    at.query_params["filler"] = "300"
    at.query_params["seed"] = "7"
    at.run()
    assert not at.exception
    assert at.sidebar.selectbox(key="_kvviz_prompt_name").value == data.PASSKEY_EXAMPLE
    assert at.session_state["kvviz_passkey_filler"] == 300
    _, key = data.passkey_prompt(300, data.DEFAULT_PASSKEY_DEPTH, seed=7)
    assert any(key in c.value for c in at.sidebar.caption)
    # the widgets write back: a changed seed is in the URL, a default one is not
    at.sidebar.number_input(key="_kvviz_passkey_seed").set_value(0).run()
    assert "seed" not in at.query_params and at.query_params["filler"] == "300"


def test_bad_link_values_are_ignored(smollm):
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["example"] = "<script>alert(1)</script>"
    at.query_params["filler"] = "99999"
    at.run()
    assert not at.exception
    assert at.sidebar.selectbox(key="_kvviz_prompt_name").value == data.CHAT_EXAMPLE
    warnings = " ".join(w.value for w in at.sidebar.warning)
    assert "link setting 'example' ignored" in warnings and "<script>" not in warnings  # escaped


def test_a_link_carries_the_policy_spec(smollm):
    page = str(Path(APP).parent / "pages" / "2_Live_Policy.py")
    at = AppTest.from_file(page, default_timeout=300)
    at.query_params["policy"] = "snapkv+quant:window=8,quant.bits=2,budget=12"
    at.run()
    assert not at.exception
    assert at.selectbox(key="live.name").value == "snapkv"
    assert at.selectbox(key="live.snapkv.companion").value == "quant"
    assert at.number_input(key="live.snapkv.window").value == 8
    assert at.selectbox(key="live.quant.bits").value == 2
    assert at.number_input(key="live.budget").value == 12
    # a change is written back as the spec's text form
    at.number_input(key="live.snapkv.window").set_value(4).run()
    assert at.query_params["policy"] == "snapkv+quant:snapkv.window=4,quant.bits=2,budget=12"

    bad = AppTest.from_file(page, default_timeout=300)
    bad.query_params["policy"] = "h2o:recent=<b>x</b>"
    bad.run()
    assert not bad.exception and bad.selectbox(key="live.name").value == "h2o"


def test_a_long_prompt_travels_compressed_and_a_bomb_is_refused(smollm):
    """A custom prompt past 300 characters used to be left out of the link without a word; it now
    travels compressed, and a compressed value that would unpack past the longest prompt is named
    in a notice instead of being unpacked."""
    long_prompt = " ".join(f"Item {i} of the list is a {'red' if i % 3 else 'blue'} box." for i in range(120))
    assert len(long_prompt) > 3000
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["kvviz_prompt_name"] = "Custom"
    at.session_state["kvviz_custom_prompt"] = long_prompt
    at.run()
    assert not at.exception
    link = at.query_params["prompt"]
    assert link.startswith("z:") and len(link) < len(long_prompt) / 3  # compressed (the text repeats itself)
    assert state.unpack(link) == long_prompt  # by the module's inverse ...

    fresh = AppTest.from_file(APP, default_timeout=300)
    fresh.query_params["example"] = "Custom"
    fresh.query_params["prompt"] = link
    fresh.run()
    assert not fresh.exception and fresh.session_state["kvviz_custom_prompt"] == long_prompt  # ... and by a new session

    bomb = "z:" + base64.urlsafe_b64encode(zlib.compress(b"a" * 5_000_000)).decode().rstrip("=")
    hostile = AppTest.from_file(APP, default_timeout=300)
    hostile.query_params["example"] = "Custom"
    hostile.query_params["prompt"] = bomb
    hostile.run()
    assert not hostile.exception
    assert "link setting 'prompt' ignored" in " ".join(w.value for w in hostile.sidebar.warning)
