"""Run bundles: a real comparison (tiny Llama) survives the round trip field for field, and every
kind of bad file is refused with one clear line; hostile strings come back as the same text."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest

from kvviz.runs import bundle
from kvviz.runs.bundle import BundleError
from kvviz.compare.result import ComparisonResult
from kvviz.record.trace import Trace
from tiny_comparison import tiny_comparison

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> **bold** $x$'


@pytest.fixture(scope="module")
def result(tiny_llama):
    return tiny_comparison(tiny_llama)


@pytest.fixture(scope="module")
def doc(result) -> dict:
    return json.loads(result.to_bundle(step=2).to_json())


def assert_traces_equal(a: Trace, b: Trace) -> None:
    for f in fields(Trace):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "extra":
            assert x.keys() == y.keys()
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])
        elif isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)  # NaN equals NaN here; float32 exact
        else:
            assert x == y, f.name


def load_doc(d: dict) -> bundle.RunBundle:
    return bundle.load(json.dumps(d))


def test_round_trip_keeps_every_trace_field(result):
    text = result.bundle_json(step=3)  # the page's path: the traces written once, the settings each time
    assert json.loads(text) == json.loads(result.to_bundle(step=3).to_json()) | {"created": json.loads(text)["created"]}
    assert result.bundle_bytes() < len(text) < result.bundle_bytes() + 2000  # the traces are the bundle
    loaded = bundle.load(text.encode("utf-8"))
    assert loaded.kind == "compare" and loaded.settings.step == 3
    assert loaded.settings.policies == result.settings.policies
    back = ComparisonResult.from_bundle(loaded)
    assert_traces_equal(back.full, result.full)
    assert len(back.runs) == len(result.runs)
    for a, b in zip(back.runs, result.runs):
        assert a.spec == b.spec
        assert_traces_equal(a.trace, b.trace)
        assert_traces_equal(a.forced, b.forced)
    assert np.isnan(back.full.scores).all()  # NaN went out as null and came back as NaN
    assert back.runs[1].trace.store_error == result.runs[1].trace.store_error  # the 4-bit store's errors
    assert back.runs[0].trace.protection == result.runs[0].trace.protection
    assert back.summary_table(2).equals(result.summary_table(2))


def test_hostile_strings_stay_the_same_text(doc):
    d = json.loads(json.dumps(doc))
    d["settings"]["prompt_text"] = HOSTILE
    d["settings"]["model"] = HOSTILE
    d["traces"]["p1"]["tokens"][3] = HOSTILE
    loaded = load_doc(d)
    assert loaded.settings.prompt_text == HOSTILE and loaded.settings.model == HOSTILE
    assert loaded.traces["p1"].tokens[3] == HOSTILE


def edit(doc: dict, change) -> str:
    d = json.loads(json.dumps(doc))
    change(d)
    return json.dumps(d)


def drop_last(lst):
    lst.pop()


BAD = {
    "wrong schema": (lambda d: d.update(schema="something.else"), "Not a kvviz run bundle"),
    "wrong version": (lambda d: d.update(version=99), "Bundle version 99 is not supported"),
    "version as true": (lambda d: d.update(version=True), "Bundle version true is not supported"),
    "unknown kind": (lambda d: d.update(kind="<b>x</b>"), "kind must be one of"),
    "settings not an object": (lambda d: d.update(settings=[]), "settings must be a JSON object, not a list"),
    "n_layers as text": (lambda d: d["traces"]["p1"].update(n_layers="2"), "traces.p1.n_layers must be a whole number, not a string"),
    "chat as a number": (lambda d: d["settings"].update(chat=1), "settings.chat must be true or false"),
    "unknown trace field": (lambda d: d["traces"]["full"].update(pickle="gASV"), "traces.full: unknown field 'pickle'"),
    "missing trace field": (lambda d: d["traces"]["full"].pop("scores"), "traces.full: missing field 'scores'"),
    "a position missing in scores": (lambda d: drop_last(d["traces"]["p1"]["scores"][1][0]), "traces.p1.scores: rows of different lengths"),
    "scores of another model": (lambda d: drop_last(d["traces"]["p1"]["scores"]), "traces.p1.scores: shape 1x2x45 does not match the trace (expected 2x2x45)"),
    "tokens shorter than positions": (lambda d: drop_last(d["traces"]["p1"]["tokens"]), "traces.p1.tokens: 44 tokens for 45 positions"),
    "kv_bytes for fewer steps": (lambda d: drop_last(d["traces"]["p2"]["kv_bytes"]), "traces.p2.kv_bytes: 4 values for 5 steps"),
    "an eviction after the end": (lambda d: d["traces"]["p1"]["evicted_at_step"][0][0].__setitem__(0, 9), "steps must be -1 (never) or between 0 and 4"),
    "text inside an int array": (lambda d: d["traces"]["p1"]["evicted_at_step"][0][0].__setitem__(0, "<b>"), "every value must be a whole number"),
    "a cut table of the wrong shape": (lambda d: drop_last(d["traces"]["p1"]["extra"]["score_cut"]), "traces.p1.extra.score_cut: shape 4x2x2"),
    "unknown policy": (lambda d: d["settings"]["policies"][0].update(policy="<img src=x>"), "settings.policies[0]: Unknown policy '<img src=x>'"),
    "parameter out of range": (lambda d: d["settings"]["policies"][0]["params"]["h2o"].update(recent=-3), "h2o: recent must be at least 0"),
    "decode path as a number": (lambda d: d["traces"]["p1"]["timings"].update(decode_path=1), "traces.p1.timings.decode_path must be a string"),
    "a timing as text": (lambda d: d["traces"]["p1"]["timings"].update(prefill_s="fast"), "traces.p1.timings.prefill_s must be a number, not a string"),
    "a trace name with markup": (lambda d: d["traces"].update({"<p1>": d["traces"]["p1"]}), "'<p1>' is not a trace name"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_bundles_get_one_clear_line(doc, name):
    change, message = BAD[name]
    with pytest.raises(BundleError) as info:
        bundle.load(edit(doc, change))
    text = str(info.value)
    assert message in text and "\n" not in text and len(text) < 300


def test_nan_and_infinity_are_not_json(doc):
    text = json.dumps(doc)
    assert "null" in text
    for constant in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(BundleError, match=f"holds {constant}, which strict JSON does not allow"):
            bundle.load(text.replace("null", constant, 1))


def test_truncated_oversized_binary_and_pickled_files(doc):
    text = json.dumps(doc)
    with pytest.raises(BundleError, match="not valid JSON"):
        bundle.load(text[: len(text) // 2])
    with pytest.raises(BundleError, match="at most 50 MiB"):
        bundle.load(b" " * (bundle.MAX_BYTES + 1))
    import pickle

    with pytest.raises(BundleError, match="not UTF-8|not valid JSON"):
        bundle.load(pickle.dumps({"schema": bundle.SCHEMA}))
    with pytest.raises(BundleError, match="must be a JSON object, not a list"):
        bundle.load("[1, 2]")


def test_comparison_level_checks(doc):
    cases = [
        (lambda d: d["traces"].pop("full"), "the full cache's trace ('full') is missing"),
        (lambda d: d["traces"].update(p9=d["traces"]["p1"]), "'p9' is not part of a comparison of 3 policies"),
        (lambda d: d["traces"]["p2"].update(prompt_ids=[1] + d["traces"]["p2"]["prompt_ids"][1:]), "traces.p2: its prompt differs"),
        (lambda d: d["traces"]["p1"].update(spec=d["traces"]["p3"]["spec"]), "it ran h2o, not the settings' p1"),
        (lambda d: d.update(kind="live"), "comes from the live page"),
    ]
    for change, message in cases:
        with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
            ComparisonResult.from_bundle(bundle.load(edit(doc, change)))
    with pytest.raises(BundleError, match="no policy that finished"):
        ComparisonResult.from_bundle(bundle.load(edit(doc, lambda d: d.update(traces={"full": d["traces"]["full"]}))))
    # a stopped comparison: the policies that finished
    partial = ComparisonResult.from_bundle(bundle.load(edit(doc, lambda d: [d["traces"].pop(k) for k in ("p3", "p3.forced")])))
    assert partial.stopped and len(partial.runs) == 2
