"""AppTest of the Live policy page: one policy of each family runs on the real SmolLM2, bad input
gets a message, and the step slider, scope and player work on the stored result."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz import policies
from kvviz.live import run as live_run
from kvviz.live.job import LiveJob
from kvviz.record.metrics import memory_saving
from tests.conftest import COUNTING

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "2_Live_Policy.py")
TIMEOUT = 600  # the first run in a process loads the model; CPU runs are slow on a busy machine
NEW_TOKENS = 4

# one policy per family (two where a family has two shapes), with settings that make it act on
# the 37-token default prompt; the checks that tell each family apart are in test_one_policy_of_each_family
FAMILIES = {
    "full": {},
    "h2o": {"live.h2o.recent": 4},
    "snapkv": {"live.snapkv.window": 4},
    "sparse_pattern": {"live.budget": 20},
    "merge": {"live.merge.recent": 4},
    "kivi": {"live.kivi.residual": 8},
    "quant": {},
    "lowrank": {},
    "head_share": {},
}


@pytest.fixture()
def page(smollm):  # smollm first: the weights cache is warm, so the page's own load takes seconds
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def run_policy(at: AppTest, name: str, settings: dict | None = None, compare: bool = True, budget: int | None = None):
    settings = dict(settings or {})
    budget = settings.pop("live.budget", budget)
    at.selectbox(key="live.name").set_value(name).run()
    for key, value in settings.items():
        at.number_input(key=key).set_value(value)
    at.slider(key="_live.new_tokens").set_value(NEW_TOKENS)
    at.checkbox(key="_live.compare").set_value(compare)
    if budget is not None:
        at.radio(key="live.budget_mode").set_value("entries per KV head").run()
        at.number_input(key="live.budget").set_value(budget)
    at.button(key="live.run").click().run()
    return at


def metrics(at: AppTest) -> dict:
    return {m.label: m.value for m in at.metric}


def token_html(at: AppTest) -> str:
    """The token view's spans (without the legend and style block before them)."""
    views = [h.proto.body for h in at.html if '<div class="kvviz-tokens">' in h.proto.body]
    return "".join(v.split('<div class="kvviz-tokens">', 1)[1] for v in views)


def shown_text(html_text: str) -> str:
    """What a browser shows of our token HTML (attribute values never hold a raw '>')."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_text))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_one_policy_of_each_family(page, name):
    family = policies.get(name).family
    at = run_policy(page, name, FAMILIES[name], compare=name in ("full", "h2o", "kivi"))
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    result: live_run.LiveResult = at.session_state["live.result"]
    trace = result.trace
    assert trace.policy == name
    assert 1 <= trace.n_steps <= NEW_TOKENS and trace.generated_text.strip()
    m = metrics(at)
    assert m["Generated"] == f"{trace.n_steps} tokens"
    assert m[f"KV cache at step {trace.n_steps - 1}"].endswith(("KiB", "MiB"))
    assert m["Full cache"].endswith(("KiB", "MiB")) and "Saved" in m
    html = token_html(at)
    assert "▌output:" in html and html.count('class="tok ') == trace.n_positions  # every token is shown at the last step
    saving = memory_saving(trace)
    if name == "full":
        assert saving.saved_bytes == 0 and "tok st-evicted" not in html
        assert result.first_divergence is None and m["First divergence"] == "none"
        assert m["Top-1 agreement"] == "100%"
    elif family in ("eviction", "sparse", "merging"):
        assert saving.saved_pct > 30
        assert "tok st-evicted" in html  # the prompt lost tokens
    else:  # stores: nothing evicted, fewer bytes
        assert "tok st-evicted" not in html and 0 < saving.saved_bytes < saving.kv_bytes_full
    tabs = [t.label for t in at.tabs]
    is_store = policies.get(name).kind == "store"
    assert ("Reconstruction error" in tabs) == is_store
    if is_store:
        assert trace.store_error and len(trace.store_error.key) == trace.n_layers
    if result.forced is not None:
        assert len(result.forced.kl_to_reference) == result.full.n_steps
        assert m["Top-1 agreement"].endswith("%")


def test_composed_selector_and_store(page):
    page.selectbox(key="live.name").set_value("snapkv").run()
    page.selectbox(key="live.snapkv.companion").set_value("quant").run()
    at = run_policy(page, "snapkv", {"live.snapkv.window": 4, "live.quant.group_size": 16}, compare=False)
    assert not at.exception and not at.error
    trace = at.session_state["live.result"].trace
    assert trace.policy == "snapkv+quant" and trace.store_error
    assert trace.params["quant"]["group_size"] == 16 and trace.params["snapkv"]["window"] == 4
    assert "Reconstruction error" in [t.label for t in at.tabs]


def test_step_slider_scope_and_player_follow_the_stored_run(page):
    at = run_policy(page, "h2o", {"live.h2o.recent": 4}, compare=False)
    result = at.session_state["live.result"]
    last = result.trace.n_steps - 1
    assert last >= 1
    html_last = token_html(at)
    slider = at.slider(key=f"live.step.{at.session_state['live.shown']}")
    assert slider.value == last
    slider.set_value(0).run()
    assert not at.exception
    assert at.session_state["live.result"] is result  # moving the slider does not rerun the model
    html_0 = token_html(at)
    assert html_0 != html_last and "tok st-next" in html_0 and "Step 0" in " ".join(c.value for c in at.caption)
    at.radio(key="_live.scope").set_value("one layer and KV head").run()
    at.slider(key="_live.layer").set_value(5).run()
    at.selectbox(key="_live.head").set_value(2).run()
    assert not at.exception
    assert "layer 5, KV head 2" in " ".join(c.value for c in at.caption)
    at.button(key="live.play").click().run()
    assert not at.exception and at.session_state["live.result"] is result


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda at: run_policy(at, "h2o", budget=500, compare=False), "larger than the prompt"),
        (lambda at: run_policy(at, "streaming_llm", {"live.streaming_llm.n_sink": 40}, budget=20, compare=False), "no recent window"),
    ],
    ids=["budget-larger-than-prompt", "invalid-params"],
)
def test_bad_policy_input_gets_a_message_and_the_page_keeps_working(page, setup, message):
    at = setup(page)
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert "live.result" not in at.session_state or at.session_state["live.result"] is None
    # the page keeps working: a valid run after the error
    at = run_policy(at, "window", compare=False, budget=16)
    assert not at.exception and not at.error
    assert at.session_state["live.result"].trace.policy == "window"


@pytest.mark.parametrize(
    "prompt, message", [("   ", "The prompt is empty"), ("word " * 9000, "longer than the model's context")],
    ids=["empty", "too-long"],
)
def test_bad_prompt_gets_a_message(page, prompt, message):
    page.sidebar.selectbox(key="_kvviz_prompt_name").set_value("Custom").run()
    page.sidebar.text_area(key="_kvviz_custom_prompt").set_value(prompt).run()
    at = run_policy(page, "h2o", compare=False)
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]


def test_hostile_prompt_is_shown_as_text(page):
    hostile = '<script>window.__pwned=1</script> <img src=x onerror="window.__pwned=1"> **bold**'
    page.sidebar.selectbox(key="_kvviz_prompt_name").set_value("Custom").run()
    page.sidebar.text_area(key="_kvviz_custom_prompt").set_value(hostile).run()
    at = run_policy(page, "window", compare=False, budget=8)
    assert not at.exception and not at.error
    body = token_html(at)
    assert "<script" not in body and "<img" not in body
    assert hostile in shown_text(body)  # visible as typed


def test_stop_ends_the_run_and_keeps_the_partial_result(smollm):
    request = live_run.prepare(smollm.tokenizer, COUNTING, chat=False, spec="h2o", max_new_tokens=64)
    job = LiveJob(smollm.model, smollm.tokenizer, request).start()
    deadline = time.monotonic() + TIMEOUT
    while len(job.policy_ids) < 3 and job.running and time.monotonic() < deadline:
        time.sleep(0.05)
    job.stop()
    assert job.wait(TIMEOUT)
    assert job.phase == "stopped" and job.error is None
    result = job.result
    assert result.stopped and result.stopped_in == "policy" and result.trace.stopped_by == "user"
    assert 3 <= result.trace.n_steps < 64 and result.full is None and result.against_full is None
    assert result.generated_text == smollm.tokenizer.decode(result.trace.generated_ids)  # the partial output, decoded whole
