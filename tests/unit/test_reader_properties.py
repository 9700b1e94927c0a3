"""Property tests (hypothesis) of the one strict trace reader: whatever a saved trace or a run bundle
is changed into (a field replaced by any JSON value, removed, added, a list cut or grown, bytes
of an npz flipped, an npz array of another dtype or shape), reading it gives a Trace that holds
together or the reader's own error (TraceError, BundleError, TraceFileError), quickly; never
another exception."""

from __future__ import annotations

import copy
import io
import json
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_synthetic import make_trace

from kvviz.policies.spec import PolicySpec
from kvviz.record.checks import TraceError
from kvviz.record.trace import ARRAY_FIELDS, Trace
from kvviz.runs import bundle
from kvviz.runs import store as run_store
from kvviz.runs.bundle import BundleError, RunBundle, RunSettings

SETTINGS = dict(max_examples=150, deadline=2000, database=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 12), st.sampled_from([2**31, 2**63, 10**40, -1]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e39, -0.0, 0.5]), st.text(max_size=8),
)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12)


def trace_doc() -> dict:
    """A valid trace as strict JSON values (what a .json trace file holds)."""
    return json.loads(make_trace().to_json())


def bundle_doc() -> dict:
    settings_ = RunSettings("synthetic", "Custom", "Hello", True, [PolicySpec.create("h2o", budget=5)], 4)
    return json.loads(RunBundle("compare", settings_, {"full": make_trace(), "p1": make_trace()}).to_json())


TRACE, BUNDLE = trace_doc(), bundle_doc()


def paths(node, prefix=()):
    """Every place in a JSON document: (path to the container, key or index)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield prefix, key
        yield from paths(child, prefix + (key,))


def mutate(data, doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        where, key = data.draw(st.sampled_from(list(paths(doc))), label="place")
        parent = doc
        for step in where:
            parent = parent[step]
        child = parent[key]
        ops = ["replace", "delete"] + (["add"] if isinstance(child, dict) else []) + (["cut", "grow"] if isinstance(child, list) else [])
        op = data.draw(st.sampled_from(ops), label="op")
        if op == "replace":
            parent[key] = data.draw(json_values, label="value")
        elif op == "delete":
            del parent[key]
        elif op == "add":
            child[data.draw(st.text(max_size=12), label="new field")] = data.draw(json_values)
        elif op == "cut" and child:
            child.pop()
        elif op == "grow" and child:
            child.append(copy.deepcopy(child[-1]))
    return doc


def holds_together(t: Trace) -> None:
    """What the pages do with a loaded trace works."""
    assert len(t.tokens) == t.n_positions == t.prompt_len + t.n_steps
    assert t.evicted_at_step.shape == t.scores.shape == (t.n_layers, t.n_kv_heads, t.n_positions)
    assert t.lost_mass.shape == (t.n_steps, t.n_layers) and t.topk_probs.shape == t.topk_ids.shape
    t.kept_share(t.n_steps - 1)
    t.final_kept_positions()
    json.loads(t.to_json())


def read(fn, error, *args):
    start = time.perf_counter()
    try:
        out = fn(*args)
    except error as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400, str(exc)
        out = None
    assert time.perf_counter() - start < 2.0
    return out


@settings(**SETTINGS)
@given(st.data())
def test_a_changed_trace_loads_or_is_refused_by_the_reader(data):
    doc = mutate(data, TRACE)
    trace = read(Trace.from_dict, TraceError, doc)
    if trace is not None:
        holds_together(trace)
    text = json.dumps(doc).encode()
    trace = read(run_store.read_trace_file, run_store.TraceFileError, "t.json", text)
    if trace is not None:
        holds_together(trace)


@settings(**SETTINGS)
@given(st.data())
def test_a_changed_bundle_loads_or_is_refused_by_the_reader(data):
    doc = mutate(data, BUNDLE)
    loaded = read(bundle.load, BundleError, json.dumps(doc))
    for trace in (loaded.traces.values() if loaded else ()):
        holds_together(trace)


@settings(**SETTINGS)
@given(st.data())
def test_any_value_for_a_field_loads_or_is_refused(data):
    """Every field of a trace in turn, given any JSON value (the fields the page reads the most)."""
    doc = copy.deepcopy(TRACE)
    name = data.draw(st.sampled_from(sorted(Trace.__dataclass_fields__)))
    doc[name] = data.draw(json_values)
    trace = read(Trace.from_dict, TraceError, doc)
    if trace is not None:
        holds_together(trace)


def npz_bytes(trace_or_arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **trace_or_arrays)
    return buf.getvalue()


def saved_npz() -> bytes:
    t = make_trace()
    arrays = {n: getattr(t, n) for n in ARRAY_FIELDS if getattr(t, n) is not None}
    meta = {k: v for k, v in json.loads(t.to_json()).items() if k not in arrays}
    return npz_bytes({"meta": np.array(json.dumps(meta)), **arrays})


NPZ = saved_npz()
dtypes = st.sampled_from(["int8", "int32", "int64", "uint8", "uint64", "float16", "float32", "float64", "bool", "complex64", "U3", "S2", "object"])


@settings(**SETTINGS)
@given(st.data())
def test_flipped_bytes_of_an_npz_are_refused_or_read(data):
    raw = bytearray(NPZ)
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(raw) // 2, len(raw)))
    trace = read(run_store.read_trace_file, run_store.TraceFileError, "t.npz", bytes(raw[:cut]))
    if trace is not None:
        holds_together(trace)


@settings(**SETTINGS)
@given(st.data())
def test_npz_arrays_of_any_dtype_and_shape_are_refused_or_read(data):
    t = make_trace()
    arrays = {n: getattr(t, n) for n in ARRAY_FIELDS if getattr(t, n) is not None}
    meta = {k: v for k, v in json.loads(t.to_json()).items() if k not in arrays}
    name = data.draw(st.sampled_from([*ARRAY_FIELDS, "meta", "extra_member"]))
    shape = tuple(data.draw(st.lists(st.integers(0, 12), max_size=4)))
    dtype = data.draw(dtypes)
    value = np.zeros(shape, dtype=dtype) if dtype != "object" else np.array([{"x": 1}] * 2, dtype=object)
    arrays[name] = value
    if name != "meta":
        arrays["meta"] = np.array(json.dumps(meta))
    trace = read(run_store.read_trace_file, run_store.TraceFileError, "t.npz", npz_bytes(arrays))
    if trace is not None:
        holds_together(trace)
