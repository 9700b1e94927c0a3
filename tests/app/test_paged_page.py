"""AppTest of the Paged cache page on the real SmolLM2: a scenario runs and its numbers match what
the tokenizer and hand arithmetic say; the step slider moves through the events; bad input gets a
message and the page goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz.paged.scenarios import BY_KEY
from kvviz.record.text import encode_prompt

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "5_Paged_Cache.py")
TIMEOUT = 600


@pytest.fixture()
def page(smollm):  # smollm first: the weights cache is warm
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def metrics(at: AppTest) -> dict:
    return {m.label: m.value for m in at.metric}


def markdown(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_defaults_offer_the_scenarios_and_run_nothing(page):
    assert [b.label for b in page.button if b.key and b.key.startswith("paged.scenario.")] == [
        "Prefix sharing", "Parallel sampling", "Preemption", "H2O: holes", "H2O: block-aware", "Mixed lengths",
    ]
    assert any("Pick a scenario" in i.value for i in page.info)
    assert not page.metric


def test_prefix_sharing_scenario(page, smollm):
    at = page.button(key="paged.scenario.prefix").click().run()
    assert not at.exception and not at.error
    sc = BY_KEY["prefix"]
    ids = [encode_prompt(smollm.tokenizer, p, chat=True) for p in sc.prompts]
    common = min(next(i for i, (a, b) in enumerate(zip(ids[0], x)) if a != b) for x in ids[1:])
    shared_blocks = common // sc.block_size  # full blocks every prompt starts with
    m = metrics(at)
    assert m["Requests"] == "4" and m["Prefix-hit blocks"] == str(3 * shared_blocks) and shared_blocks >= 5
    assert m["Copy-on-write copies"] == "0" and m["Preemptions"] == "0"
    assert at.slider(key="paged.step").value == 1  # the step where all four are admitted together
    text = markdown(at)
    shared = ", ".join(map(str, range(shared_blocks)))
    for rid in ("r1", "r2", "r3"):  # r0's first blocks, in the same step
        assert f"{rid} reuses blocks {shared} for its logical blocks {shared} (prefix hits)" in text
    assert len(at.get("plotly_chart")) == 5
    used = shared_blocks + sum(-(-len(x) // sc.block_size) - shared_blocks for x in ids)  # after the prompts
    title = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"]
    assert title.startswith(f"Pool after step 1: {used} of {sc.num_blocks} blocks in use")
    # last step: every request finished, no block in use; the hashed prompt blocks stay cached
    at.slider(key="paged.step").set_value(at.slider(key="paged.step").max).run()
    assert "every request finished" in markdown(at)
    title = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"]
    assert title.startswith(f"Pool after step {int(at.slider(key='paged.step').max)}: 0 of {sc.num_blocks} blocks in use")


def test_step_slider_and_play(page):
    at = page.button(key="paged.scenario.sampling").click().run()
    assert metrics(at)["Copy-on-write copies"] == "3"  # n = 4: three samples copy the shared last block
    at.slider(key="paged.step").set_value(2).run()
    assert markdown(at).count("copied to block") == 3
    last = at.slider(key="paged.step").max
    at.slider(key="paged.step").set_value(last - 2).run()
    at.button(key="paged.play").click().run()  # plays to the end, one step per rerun
    assert at.slider(key="paged.step").value == last and not at.exception


def test_bad_input_gets_a_message(page):
    at = page
    at.text_area(key="_paged.prompts").set_value("   \n  ")
    at.button(key="paged.custom_run").click().run()
    assert any("No prompt given" in e.value for e in at.error) and not at.exception
    at.text_area(key="_paged.prompts").set_value("<script>alert(1)</script> The capital of France is a city where many")
    at.number_input(key="_paged.block_size").set_value(1)
    at.number_input(key="_paged.num_blocks").set_value(3)
    at.button(key="paged.custom_run").click().run()
    assert any("cannot hold request r0 alone" in e.value for e in at.error) and not at.exception
    at.number_input(key="_paged.block_size").set_value(4)
    at.number_input(key="_paged.num_blocks").set_value(32)
    at.number_input(key="_paged.max_new_tokens").set_value(3)
    at.button(key="paged.custom_run").click().run()
    assert not at.error and not at.exception
    assert metrics(at)["Requests"] == "1"
    assert "<script>" not in markdown(at)  # the prompt only reaches the output table, never raw HTML


def test_a_link_reopens_a_custom_run_and_its_step(smollm):
    """Every choice of the custom form, the scenario and the step live in the page's link: a fresh
    session on the copied link runs the same requests and shows the same step."""
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.run()
    at.text_area(key="_paged.prompts").set_value("The capital of France is\nThe capital of Italy is")
    at.number_input(key="_paged.block_size").set_value(2)
    at.number_input(key="_paged.num_blocks").set_value(24)
    at.number_input(key="_paged.max_new_tokens").set_value(3)
    at.button(key="paged.custom_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.slider(key="paged.step").set_value(2).run()
    link = {k: at.query_params[k] for k in at.query_params}
    assert link["scenario"] == "custom" and link["block"] == "2" and link["blocks"] == "24" and link["step"] == "2"

    fresh = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    for key, value in link.items():
        fresh.query_params[key] = value
    fresh.run()
    assert not fresh.exception and not fresh.error, [e.value for e in fresh.error]
    a, b = at.session_state["paged.run"][1], fresh.session_state["paged.run"][1]
    assert [r["generated_token_ids"] for r in a.requests] == [r["generated_token_ids"] for r in b.requests]
    assert (b.block_size, b.num_blocks, len(b.requests)) == (2, 24, 2)
    assert fresh.slider(key="paged.step").value == 2
