"""AppTest of what the Live page promises beyond a run: a result says which settings produced it,
a stored run reopens from its link (or says it was interrupted), Stop says which phase it ended,
the demos set everything in one click, an out-of-memory error leaves a message and a working
page, two sessions keep their own results, and the sidebar names the embedded model plainly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from kvviz.record import examples as data
from kvviz.runtime import engine
from kvviz.live import run as live_run
from kvviz.live.job import LiveJob
from kvviz.runs import store as run_store
from kvviz.policies.spec import PolicySpec
from tests.conftest import COUNTING

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "2_Live_Policy.py")
TIMEOUT = 600


@pytest.fixture()
def page(smollm):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def run(at: AppTest, new_tokens: int = 3, compare: bool = False) -> AppTest:
    at.slider(key="_live.new_tokens").set_value(new_tokens)
    at.checkbox(key="_live.compare").set_value(compare)
    return at.button(key="live.run").click().run()


def texts(at: AppTest) -> str:
    """Everything the page wrote, markdown escapes removed."""
    return " ".join(e.value for e in [*at.caption, *at.warning, *at.info, *at.error, *at.markdown, *at.subheader]).replace("\\", "")


def test_the_result_names_its_settings_and_notices_new_ones(page):
    at = page
    at.number_input(key="live.h2o.recent").set_value(4)
    at = run(at)
    result = at.session_state["live.result"]
    assert result.request.spec == PolicySpec.parse("h2o:recent=4,ratio=0.25")
    assert "h2o recent=4 · 25%" in texts(at) and "Settings of this run: **h2o:recent=4,ratio=0.25**" in texts(at)
    at.selectbox(key="live.name").set_value("snapkv").run()
    assert "This result is from earlier settings. The controls above now say: the policy is **snapkv" in texts(at)
    assert at.session_state["live.result"] is result  # nothing reran
    at.slider(key="_live.new_tokens").set_value(5).run()
    assert "new tokens 3 → 5" in texts(at)  # every input of the run, not only the policy (issue 24)
    at.selectbox(key="live.name").set_value("h2o").run()
    at.number_input(key="live.h2o.recent").set_value(4)
    at.slider(key="_live.new_tokens").set_value(3).run()
    assert "earlier settings" not in texts(at)  # back to the run's own settings: no mark


def test_a_stored_run_reopens_from_its_link_in_a_new_session(page, smollm):
    at = run(page)
    run_id = at.query_params["run"][0] if isinstance(at.query_params["run"], list) else at.query_params["run"]
    ids = at.session_state["live.result"].trace.generated_ids
    fresh = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    fresh.query_params["run"] = run_id
    fresh.run()
    assert not fresh.exception
    assert fresh.session_state["live.result"].trace.generated_ids == ids
    assert "Reopened from the run store" in texts(fresh)


def test_an_interrupted_run_says_so(smollm):
    rid = run_store.new_run_id()
    request = live_run.LiveRequest(PolicySpec.parse("h2o"), 8, [1, 2, 3], run_id=rid)
    run_store.begin(rid, request.to_dict())
    run_store.active.discard(rid)  # as after a restart
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.query_params["run"] = rid
    at.run()
    assert not at.exception
    assert any("was interrupted: the server stopped before it finished" in w.value for w in at.warning)


def test_stop_during_the_comparison_names_the_phase(smollm):
    request = live_run.prepare(smollm.tokenizer, COUNTING, chat=False, spec="h2o", max_new_tokens=24)
    job = LiveJob(smollm.model, smollm.tokenizer, request).start()
    deadline = time.monotonic() + TIMEOUT
    while (job.phase != "full" or len(job.full_ids) < 2) and job.running and time.monotonic() < deadline:
        time.sleep(0.02)
    job.stop()
    assert job.wait(TIMEOUT)
    result = job.result
    assert result.stopped_in == "full" and result.full is None and result.forced is None
    assert result.trace.stopped_by != "user" and result.trace.n_steps >= 1  # the policy's own run ended normally
    assert "policy's run finished" in live_run.STOPPED_IN["full"]


def test_a_demo_sets_prompt_policy_and_settings_in_one_click(page):
    name = next(n for n in data.PRESETS if "snapkv" in n)
    at = page.button(key=f"live.preset.{name}").click().run()
    assert not at.exception
    assert at.sidebar.selectbox(key="_kvviz_prompt_name").value == data.PASSKEY_EXAMPLE
    assert at.selectbox(key="live.name").value == "snapkv" and at.number_input(key="live.snapkv.window").value == 8
    assert at.slider(key="live.ratio").value == pytest.approx(0.25) and at.slider(key="_live.new_tokens").value == 12
    assert any("SnapKV lets the last 8 prompt tokens" in i.value for i in at.info)


def test_out_of_memory_leaves_a_message_and_a_working_page(page, monkeypatch):
    real = engine.run

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine, "run", no_memory)
    at = run(page)
    assert not at.exception
    assert any("ran out of memory" in e.value for e in at.error)
    monkeypatch.setattr(engine, "run", real)
    at = run(at)
    assert not at.exception and not at.error and at.session_state["live.result"].trace.n_steps >= 1


def test_two_sessions_keep_their_own_results(smollm):
    one = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    two = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    one = run(one)
    two.run()
    assert one.session_state["live.result"] is not None
    assert "live.result" not in two.session_state or two.session_state["live.result"] is None
    two = run(two, new_tokens=2)
    assert two.session_state["live.result"].request.run_id != one.session_state["live.result"].request.run_id


def test_the_sidebar_names_the_embedded_model_and_links_with_a_path_still_work(smollm):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    field = at.sidebar.text_input(key="_kvviz_model_spec")
    assert field.value == "SmolLM2-135M-Instruct, embedded" and "SmolLM2-135M-Instruct.Q4_1.gguf" in field.help
    from kvviz.model.loading import embedded_gguf_path

    linked = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    linked.query_params["model"] = str(embedded_gguf_path())
    linked.run()
    assert not linked.exception and not [w for w in linked.sidebar.warning if "model" in w.value]


CHINESE = "Translate to Chinese: I love cats."  # SmolLM2 answers "愛...", 愛 spread over several tokens


def test_an_output_cut_inside_a_character_says_why(page, smollm):
    # transformers' tokenizer decides: with one new token the output is part of a character
    ids = live_run.prepare(smollm.tokenizer, CHINESE, chat=True, spec="full", max_new_tokens=1).prompt_ids
    out = engine.run(smollm.model, smollm.tokenizer, ids, PolicySpec.of("full"), engine.DecodeOptions(max_new_tokens=16)).generated_ids
    assert smollm.tokenizer.decode(out[:1]).endswith("\ufffd")
    whole = next(k for k in range(2, 17) if not smollm.tokenizer.decode(out[:k]).endswith("\ufffd"))  # first complete cut
    page.sidebar.selectbox(key="_kvviz_prompt_name").set_value("Custom").run()
    page.sidebar.text_area(key="_kvviz_custom_prompt").set_value(CHINESE).run()
    page.selectbox(key="live.name").set_value("full").run()
    at = run(page, new_tokens=1)
    assert not at.exception and "stopped partway through a character of several bytes" in texts(at)
    at = run(at, new_tokens=whole)  # the characters complete: no note
    assert not at.exception and not at.session_state["live.result"].generated_text.endswith("\ufffd")
    assert "stopped partway through a character" not in texts(at)
