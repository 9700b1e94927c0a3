"""One strict trace reader (issue 16) behind Trace.load, the run store, the Live page's upload and
run bundles: the same bad trace gets the same message naming the field on every path; unknown
fields are refused everywhere; a file opened on the wrong page says which page opens it; and the
app has one upload limit (issue 24)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from live_synthetic import make_trace

from kvviz.policies.spec import PolicySpec
from kvviz.record import trace_reader
from kvviz.record.trace import Trace, TraceError
from kvviz.runs import bundle
from kvviz.runs import store as run_store
from kvviz.runs.bundle import BundleError, RunBundle, RunSettings

ROOT = Path(__file__).resolve().parents[2]


def trace_doc() -> dict:
    return json.loads(make_trace().to_json())


def bundle_of(doc: dict) -> str:
    settings = RunSettings("synthetic", "Custom", "Hello", True, [PolicySpec.create("h2o", budget=5)], 4)
    head = json.loads(RunBundle("compare", settings, {"full": make_trace()}).to_json())
    head["traces"]["p1"] = doc
    return json.dumps(head)


def every_path(doc: dict, tmp_path: Path) -> dict[str, str]:
    """The message each way of reading ``doc`` gives (None when it reads)."""
    out = {}

    def attempt(name, fn):
        try:
            fn()
            out[name] = None
        except TraceError as exc:  # BundleError and TraceFileError are TraceErrors
            out[name] = str(exc)

    attempt("from_dict", lambda: Trace.from_dict(doc))
    (tmp_path / "t.json").write_text(json.dumps(doc))
    attempt("load json", lambda: Trace.load(tmp_path / "t.json"))
    attempt("upload json", lambda: run_store.read_trace_file("t.json", json.dumps(doc).encode()))
    attempt("bundle", lambda: bundle.load(bundle_of(doc)))
    arrays = {k: np.asarray(v, dtype=np.float32 if k not in ("evicted_at_step", "topk_ids", "top1_agreement") else None)
              for k, v in doc.items() if k in trace_reader.ARRAY_NDIM and isinstance(v, list)}
    if arrays:  # the same document as an npz: the arrays as arrays, the rest as meta
        meta = {k: v for k, v in doc.items() if k not in arrays}
        np.savez_compressed(tmp_path / "t.npz", meta=np.array(json.dumps(meta)), **arrays)
        attempt("upload npz", lambda: run_store.read_trace_file("t.npz", (tmp_path / "t.npz").read_bytes()))
        attempt("load npz", lambda: Trace.load(tmp_path / "t.npz"))
    return out


CASES = {
    "n_layers as text": (lambda d: d.update(n_layers="2"), "trace.n_layers must be a whole number, not a string."),
    "unknown field": (lambda d: d.update(notes="hi"), "trace: unknown field 'notes'."),
    "unknown protection field": (lambda d: d["protection"].update(window=3), "trace.protection: unknown field 'window'."),
    "missing scores": (lambda d: d.pop("scores"), "trace: missing field 'scores'."),
    "tokens short": (lambda d: d["tokens"].pop(), "trace.tokens: 9 tokens for 10 positions (prompt + generated)."),
    "kv_bytes short": (lambda d: d["kv_bytes"].pop(), "trace.kv_bytes: 3 values for 4 steps."),
    "scores of another model": (lambda d: d["scores"].pop(), "trace.scores: shape 1x2x10 does not match the trace (expected 2x2x10)."),
    "an eviction after the end": (lambda d: d["evicted_at_step"][0][0].__setitem__(0, 7), "trace.evicted_at_step: steps must be -1 (never) or between 0 and 3."),
    "entropy for 3 steps": (lambda d: d["entropy"].pop(), "trace.entropy: shape 3 does not match the trace (expected 4)."),
    "stopped by a shrug": (lambda d: d.update(stopped_by="shrug"), "trace.stopped_by must be one of eos, max_new_tokens, user, not 'shrug'."),
    "a device without layers": (lambda d: d.update(device_memory={"cuda:0": {"kv_bytes": 1, "weights_bytes": 2}}), "trace.device_memory.cuda:0: missing field 'layers'."),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_path_gives_the_same_message(tmp_path, name):
    change, message = CASES[name]
    doc = trace_doc()
    change(doc)
    got = every_path(doc, tmp_path)
    assert set(got) >= {"from_dict", "load json", "upload json", "bundle"}
    for path, text in got.items():
        expected = message.replace("trace", "traces.p1", 1) if path == "bundle" else message
        assert text is not None and text.endswith(expected), (path, text)


def test_a_valid_trace_reads_the_same_on_every_path(tmp_path):
    assert set(every_path(trace_doc(), tmp_path).values()) == {None}


def test_a_spec_the_policies_refuse_is_refused_on_upload_but_its_form_is_checked_everywhere():
    doc = trace_doc() | {"spec": {"policy": "<img src=x>", "params": {}, "budget": 5, "ratio": None}}
    assert Trace.from_dict(doc).spec["policy"] == "<img src=x>"  # the record floor checks the form only
    with pytest.raises(TraceError, match=re.escape("t.json: trace.spec: Unknown policy '<img src=x>'")):
        run_store.read_trace_file("t.json", json.dumps(doc).encode())  # the page then builds a PolicySpec from it
    with pytest.raises(TraceError, match=re.escape("trace.spec.budget must be a whole number, not a string")):
        Trace.from_dict(doc | {"spec": {"policy": "h2o", "budget": "5"}})


def test_a_damaged_stored_phase_is_left_out_and_the_run_reopens(tmp_path, monkeypatch):
    monkeypatch.setenv("KVVIZ_CACHE_DIR", str(tmp_path))
    rid = run_store.new_run_id()
    run_store.begin(rid, {"spec": "h2o"})
    run_store.active.discard(rid)
    folder = run_store.runs_dir() / rid
    make_trace().save(folder / "policy.npz")
    (folder / "full.npz").write_bytes(b"PK\x03\x04 not a zip")
    stored = run_store.load(rid)
    assert set(stored.traces) == {"policy"} and stored.traces["policy"].tokens == make_trace().tokens


def test_a_compare_bundle_on_the_live_page_says_where_it_opens():
    text = bundle_of(trace_doc())
    with pytest.raises(TraceError) as info:
        run_store.read_trace_file("run.bundle.json", text.encode())
    assert str(info.value) == "run.bundle.json: This is a run bundle from the Compare policies page: open it there."
    assert "__init__" not in str(info.value)


def test_a_live_trace_in_the_bundle_box_says_where_it_opens():
    with pytest.raises(BundleError) as info:
        bundle.load(json.dumps(trace_doc()))
    assert str(info.value) == "This is a trace saved on the Live policy page: open it there, under “Open a saved trace”."
    assert bundle.page_of("sweep") == "Tradeoffs" and bundle.page_of(["x"]) == "Compare policies"


def test_one_upload_limit():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    limit = trace_reader.MAX_FILE_BYTES
    assert config["server"]["maxUploadSize"] << 20 == limit == bundle.MAX_BYTES == run_store.MAX_TRACE_FILE_BYTES
    with pytest.raises(BundleError, match="kvviz opens bundles of at most 50 MiB"):
        bundle.load(b" " * (limit + 1))
    with pytest.raises(TraceError, match="big.npz: The file is 50.0 MiB; kvviz opens files of at most 50 MiB"):
        run_store.read_trace_file("big.npz", b" " * (limit + 1))
    # no other upload limit in the code: every uploader takes its size from these constants
    uploaders = [p for p in (ROOT / "kvviz" / "ui").glob("*.py") if "file_uploader(" in p.read_text()]
    assert len(uploaders) >= 2  # the bundle box, the Live page's trace upload
    for path in uploaders:
        text = path.read_text()
        assert not re.search(r"\b(20|50|200)\s*\*\s*1024|\b(20|50|200)\s*<<\s*20|\d+e6\b", text), path.name
        for call in re.findall(r"file_uploader\((.*?)\n\s*\)", text, flags=re.S):
            assert "max_upload_size=" in call, path.name
