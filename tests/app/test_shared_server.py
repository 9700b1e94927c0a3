"""AppTest of a shared server (issue 21): the operator's allow-list and caps refuse with one
message naming the setting, a visitor's run waits its turn in the process's queue, and a run that
runs out of memory fails alone while the next one works."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from kvviz.runtime import comparison, engine
from kvviz.runtime.jobs import BackgroundJob, process_queue

PAGES = Path(__file__).resolve().parents[2] / "pages"
TIMEOUT = 600


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / name), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def errors(at: AppTest, where=None) -> list[str]:
    """The error messages shown, as a person reads them (markdown escapes removed)."""
    return [re.sub(r"\\(.)", r"\1", e.value) for e in (where or at).error]


def live_run_click(at: AppTest, new_tokens: int, compare: bool = False) -> AppTest:
    at.slider(key="_live.new_tokens").set_value(new_tokens)
    at.checkbox(key="_live.compare").set_value(compare)
    return at.button(key="live.run").click().run()


def test_a_model_not_offered_is_refused_by_name(smollm, tmp_path):
    home = page("0_Home.py")
    field = home.sidebar.text_input(key="_kvviz_model_spec")
    field.set_value("HuggingFaceTB/SmolLM2-360M-Instruct").run()
    assert not home.exception
    (message,) = errors(home, home.sidebar)
    assert "HuggingFaceTB/SmolLM2-360M-Instruct is not among the models this server offers (KVVIZ_ALLOWED_MODELS)" in message
    assert "Still using SmolLM2-135M-Instruct" in message

    gguf = tmp_path / "visitor.gguf"
    gguf.write_bytes(b"GGUF")
    home.sidebar.text_input(key="_kvviz_model_spec").set_value(str(gguf)).run()
    (message,) = errors(home, home.sidebar)
    assert "does not open files or folders named in the browser (KVVIZ_ALLOW_LOCAL_PATHS is off)" in message
    assert str(tmp_path) not in message  # the refusal does not echo server paths back


def test_a_link_cannot_name_a_model_either(smollm):
    at = AppTest.from_file(str(PAGES / "2_Live_Policy.py"), default_timeout=TIMEOUT)
    at.query_params["model"] = "/etc"
    at.run()
    assert not at.exception
    assert any("KVVIZ_ALLOW_LOCAL_PATHS" in e for e in errors(at, at.sidebar))
    assert at.button(key="live.run")  # the embedded model keeps serving the page


def test_models_the_operator_lists_are_let_through(smollm, monkeypatch):
    monkeypatch.setenv("KVVIZ_ALLOWED_MODELS", "kvviz-no-such-org/no-model")
    home = page("0_Home.py")
    home.sidebar.text_input(key="_kvviz_model_spec").set_value("kvviz-no-such-org/no-model").run()
    (message,) = errors(home, home.sidebar)
    assert "KVVIZ_ALLOWED_MODELS" not in message and "kvviz-no-such-org/no-model" in message  # it was tried: a load error


def test_a_prompt_over_the_cap_stops_the_page_with_one_message(smollm, monkeypatch):
    monkeypatch.setenv("KVVIZ_MAX_PROMPT_TOKENS", "20")  # the default example has 37 tokens
    at = page("2_Live_Policy.py")
    (message,) = errors(at)
    assert message.startswith("The prompt has 37 tokens; this server runs prompts of at most 20") and "KVVIZ_MAX_PROMPT_TOKENS" in message
    assert "live.run" not in [b.key for b in at.button]


def test_new_tokens_over_the_cap_are_refused_and_the_cap_itself_runs(smollm, monkeypatch):
    monkeypatch.setenv("KVVIZ_MAX_NEW_TOKENS", "3")
    at = live_run_click(page("2_Live_Policy.py"), 5)
    assert not at.exception
    (message,) = errors(at)
    assert "5 tokens per run asked for; this server runs at most 3" in message and "KVVIZ_MAX_NEW_TOKENS" in message
    assert at.session_state["live.result"] is None if "live.result" in at.session_state else True  # no run started
    at = live_run_click(at, 3)
    assert errors(at) == []
    assert at.session_state["live.result"].trace.n_steps == 3


def test_a_sweep_over_the_cap_is_refused_before_it_starts(smollm, monkeypatch):
    monkeypatch.setenv("KVVIZ_MAX_SWEEP_RUNS", "5")
    at = page("4_Tradeoffs.py")  # the default preset: 1 + 2 policies x 3 ratios = 7 runs
    (message,) = errors(at)
    assert "This sweep has 7 runs; this server runs at most 5 in one sweep" in message and "KVVIZ_MAX_SWEEP_RUNS" in message
    assert "tradeoffs.run" not in [b.key for b in at.button]


class Blocker(BackgroundJob):
    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def work(self) -> None:
        self.release.wait(60)


def test_a_run_waits_its_turn_and_says_where_it_stands(smollm):
    at = page("2_Live_Policy.py")
    queue = process_queue()
    blocker = Blocker()
    blocker.queue = queue
    blocker.start()
    seen: list[str] = []

    def watch():  # what the page's progress bar reads while the run waits, then let it run
        end = time.monotonic() + 60
        while time.monotonic() < end:
            waiting = [j for j in list(queue._waiting) if j is not blocker]
            if waiting:
                seen.append(waiting[0].progress()[1])
                time.sleep(0.5)
                seen.append(waiting[0].progress()[1])
                break
            time.sleep(0.02)
        blocker.release.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        at = live_run_click(at, 2)
    finally:
        blocker.release.set()
        watcher.join()
    assert not at.exception and errors(at) == []
    assert seen == ["Waiting in the queue: 1 run ahead of yours"] * 2
    result = at.session_state["live.result"]
    assert result.trace.n_steps == 2
    assert queue.counts() == (0, 0)


def test_out_of_memory_fails_that_run_only(smollm, monkeypatch):
    at = page("2_Live_Policy.py")
    real = comparison.against_full_runs
    calls = []

    def out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(comparison, "against_full_runs", out_of_memory_once)
    at = live_run_click(at, 4)
    assert not at.exception
    (message,) = errors(at)
    assert "ran out of memory" in message
    at = live_run_click(at, 4)
    assert not at.exception and errors(at) == []
    # the next run is whole, and equal to a run of its own
    request = at.session_state["live.result"].request
    solo = engine.run(smollm.model, smollm.tokenizer, request.prompt_ids, request.spec, engine.DecodeOptions(max_new_tokens=4))
    assert at.session_state["live.result"].trace.generated_ids == solo.generated_ids
    assert len(calls) == 2 and process_queue().counts() == (0, 0)


@pytest.mark.parametrize("mb, shown", [("1", "at most 1 MiB"), ("", "at most 50 MiB")])
def test_the_upload_cap(smollm, monkeypatch, mb, shown):
    monkeypatch.setenv("KVVIZ_MAX_UPLOAD_MB", mb)
    at = page("3_Compare.py")
    uploader = at.file_uploader(key="compare.result.upload")
    assert shown in uploader.label
    if mb:
        uploader.set_value(("big.json", b" " * (2 << 20), "application/json")).run()
        (message,) = errors(at)
        assert "big.json: The file is 2.0 MiB; kvviz opens bundles of at most 1 MiB (this server's setting KVVIZ_MAX_UPLOAD_MB)" in message


@pytest.mark.parametrize("name, key, data", [
    ("3_Compare.py", "compare.result.upload", b"this is not json"),
    ("2_Live_Policy.py", "live.upload", b"this is not json"),
    ("2_Live_Policy.py", "live.upload", b"\xff\xfe not even UTF-8"),
])
def test_a_file_that_is_not_json_gets_one_message(smollm, name, key, data):
    at = page(name)
    at.file_uploader(key=key).set_value(("bad.json", data, "application/json")).run()
    assert not at.exception
    (message,) = errors(at)  # one cause, one message (also checked in Chromium by hand: one alert)
    assert message.startswith("bad.json: The file is not") and "JSON" in message
