"""AppTest of the Compare page on the real SmolLM2: a link with three policies and a step opens
that view, each column's numbers equal independent engine runs, the address bar carries the
view to a fresh session, and bundles reopen (a hostile one gets a message, the page goes on)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz.record import examples as data
from tests.app.escaping import visitor_html
from kvviz.runtime import engine
from kvviz.record.metrics import format_bytes
from kvviz.policies.spec import PolicySpec
from kvviz.record.token_states import occupancy
from kvviz.record.text import encode_prompt

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "3_Compare.py")
TIMEOUT = 900  # seven runs of SmolLM2 on a busy CPU
LINK = {
    "p1": "h2o:recent=4,budget=12",
    "p2": "snapkv:window=4,budget=12",
    "p3": "streaming_llm:budget=12",
    "same": "0",
    "new": "4",
    "step": "2",
}
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1"> **bold**'


def open_link(params: dict) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


@pytest.fixture(scope="module")
def linked(smollm):
    """The page opened from a link: it runs the comparison once and shows the linked step."""
    at = open_link(LINK)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def errors(at: AppTest) -> list[str]:
    """The error messages as a person reads them (untrusted parts are markdown-escaped)."""
    return [re.sub(r"\\(.)", r"\1", e.value) for e in at.error]


def html_bodies(at: AppTest) -> str:
    return "".join(visitor_html(at))


def test_a_link_with_three_policies_and_a_step_opens_that_view(linked):
    at = linked
    for i, (name, key, value) in enumerate([("h2o", "cmp1.h2o.recent", 4), ("snapkv", "cmp2.snapkv.window", 4), ("streaming_llm", None, None)]):
        assert at.selectbox(key=f"cmp{i + 1}.name").value == name
        if key:
            assert at.number_input(key=key).value == value
        assert at.number_input(key=f"cmp{i + 1}.budget").value == 12
    result = at.session_state["compare.result"]
    assert [r.spec.to_text() for r in result.runs] == [LINK["p1"], LINK["p2"], LINK["p3"]]
    assert result.settings.max_new_tokens == 4 and result.n_steps == 4
    step_slider = [s for s in at.slider if s.label.startswith("Decode step")][0]
    assert step_slider.value == 2
    for key, value in LINK.items():  # the address bar keeps the view
        assert at.query_params[key] == value, key


def test_each_column_equals_an_independent_engine_run(smollm, linked):
    at = linked
    result = at.session_state["compare.result"]
    ids = encode_prompt(smollm.tokenizer, result.settings.prompt_text, chat=result.settings.chat)
    assert result.full.prompt_ids == ids
    summary = [d.value for d in at.dataframe if "kv_bytes" in d.value.columns][0]
    held_metrics = [m.value for m in at.metric if m.label == "K/V held"]
    kept_metrics = [m.value for m in at.metric if m.label == "Kept per head"]
    kept_deltas = [m.delta for m in at.metric if m.label == "Kept per head"]
    full = engine.run(smollm.model, smollm.tokenizer, ids, "full", max_new_tokens=4)
    assert summary["kv_bytes"][0] == full.kv_bytes[2] and summary["output"][0] == full.generated_text
    for i, text in enumerate([LINK["p1"], LINK["p2"], LINK["p3"]]):
        alone = engine.run(smollm.model, smollm.tokenizer, ids, PolicySpec.parse(text), max_new_tokens=4)
        held, entries = occupancy(alone, 2)
        assert summary["kv_bytes"][i + 1] == alone.kv_bytes[2]
        assert summary["kept entries per layer and KV head"][i + 1] == pytest.approx(held.mean())
        assert held_metrics[i] == format_bytes(alone.kv_bytes[2])
        assert kept_metrics[i] == f"{held.mean():.4g}" and kept_deltas[i] == f"of {entries}"
        assert summary["output"][i + 1] == alone.generated_text
    # the budgets as hand arithmetic: 12 entries per head, SnapKV keeps the generated tokens too (12 + 2)
    assert kept_metrics == ["12", "14", "12"] and kept_deltas == ["of 39"] * 3


def test_the_copied_address_reopens_the_same_view(linked):
    at = linked
    copied = {key: at.query_params[key] for key in at.query_params}
    fresh = open_link(copied)
    assert not fresh.exception and not fresh.error
    for key in ("cmp1.name", "cmp2.name", "cmp3.name"):
        assert fresh.selectbox(key=key).value == at.selectbox(key=key).value
    assert fresh.radio(key="_compare.n").value == 3
    assert [s.value for s in fresh.slider if s.label.startswith("Decode step")] == [2]
    a, b = at.session_state["compare.result"], fresh.session_state["compare.result"]
    assert [r.trace.generated_ids for r in a.runs] == [r.trace.generated_ids for r in b.runs]
    assert a.summary_table(2)["kv_bytes"].tolist() == b.summary_table(2)["kv_bytes"].tolist()


def test_bundles_reopen_and_hostile_ones_get_a_message(smollm, linked):
    result = linked.session_state["compare.result"]
    doc = json.loads(result.to_bundle(step=1).to_json())
    assert doc["settings"]["model"] == "SmolLM2-135M-Instruct, embedded"  # its name, not the server's path to the file
    doc["settings"]["prompt_name"] = "Custom"
    doc["settings"]["prompt_text"] = HOSTILE
    for name in ("full", "p1", "p1.forced", "p2", "p2.forced", "p3", "p3.forced"):
        doc["traces"][name]["tokens"][-1] = HOSTILE  # the last generated token of every run
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception and "compare.result" not in at.session_state

    at.file_uploader(key="compare.result.upload").set_value(("hostile.json", json.dumps(doc).encode(), "application/json")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [s.value for s in at.slider if s.label.startswith("Decode step")] == [1]  # the bundle's step
    assert at.selectbox(key="cmp2.name").value == "snapkv" and at.number_input(key="cmp2.snapkv.window").value == 4
    body = html_bodies(at)
    assert "<script" not in body and "<img" not in body
    shown = html.unescape(re.sub(r"<[^>]+>", "", body))
    assert HOSTILE in shown  # visible as text, in the outputs
    assert at.session_state["kvviz_custom_prompt"] == HOSTILE  # the sidebar holds the bundle's prompt as text

    bad = dict(doc, version=7)
    at.file_uploader(key="compare.result.upload").set_value(("old.json", json.dumps(bad).encode(), "application/json")).run()
    assert not at.exception
    assert any("Bundle version 7 is not supported" in e for e in errors(at))
    assert at.session_state["compare.result"].settings.prompt_text == HOSTILE  # the open comparison stays
    broken = b'{"schema": "kvviz.run_bundle", "version": 1, "kind": "compare", "settings": {'
    at.file_uploader(key="compare.result.upload").set_value(("cut.json", broken, "application/json")).run()
    assert not at.exception and any("not valid JSON" in e for e in errors(at))
    at.slider(key=f"compare.step.{at.session_state['compare.run_id']}").set_value(0).run()
    assert not at.exception  # the page goes on


def test_bad_policy_input_gets_a_message(smollm):
    at = open_link({"p1": "h2o:budget=500", "p2": "window:budget=8", "n": "2", "same": "0"})
    at.button(key="compare.run").click().run()
    assert not at.exception
    assert any("p1 (h2o:budget=500)" in e and "larger than the prompt" in e for e in errors(at)), errors(at)
    assert "compare.result" not in at.session_state or at.session_state["compare.result"] is None


def test_a_preset_sets_every_control_in_one_click(smollm):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    [preset] = [b for b in at.button if b.label.startswith("Passkey")]
    preset.click().run()
    assert not at.exception and not at.error
    assert at.radio(key="_compare.n").value == 3 and at.slider(key="_compare.new_tokens").value == 12
    assert [at.selectbox(key=f"cmp{i}.name").value for i in (1, 2, 3)] == ["h2o", "snapkv", "streaming_llm"]
    assert at.number_input(key="cmp2.snapkv.window").value == 8
    assert at.toggle(key="_compare.same_budget").value and at.slider(key="compare.all.ratio").value == 0.25
    assert at.sidebar.selectbox(key="_kvviz_prompt_name").value == data.PASSKEY_EXAMPLE
    assert at.query_params["p2"] == "snapkv:window=8,ratio=0.25" and at.query_params["example"] == data.PASSKEY_EXAMPLE
    assert "p1" not in at.query_params  # h2o at 25% is the column's default: short links
    assert "compare.link_step" not in at.session_state  # a run after a preset opens at its last step
