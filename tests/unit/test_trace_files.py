"""Saved traces: strict JSON (a parser that refuses NaN and Infinity reads them) and every field
back as it was, through JSON and through npz."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from live_synthetic import make_trace

from kvviz.record.trace import UNSAVED_FIELDS, Protection, StoreError, Trace


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def every_field_set() -> Trace:
    """A trace whose every field differs from its default, with NaN where the engine writes NaN
    (never-scored entries, unmeasured lost mass, a step without a reference)."""
    t = make_trace()
    lost = np.full((t.n_steps, t.n_layers), np.nan, dtype=np.float32)
    lost[1] = [0.25, 0.5]
    return dataclasses.replace(
        t,
        lost_mass=lost,
        topk_ids=np.array([[10, 3], [11, 4], [12, 5], [13, 6]], dtype=np.int64),
        topk_probs=np.array([[0.5, 0.25]] * 4, dtype=np.float32),
        entropy=np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32),
        chosen_logprob=np.array([-0.7, -0.1, -2.5, -0.01], dtype=np.float32),
        kl_to_reference=np.array([0.0, 0.01, np.nan, 0.3], dtype=np.float32),
        top1_agreement=np.array([True, True, False, True]),
        teacher_forced=True,
        stopped_by="eos",
        store_error=StoreError(key=[0.1, 0.2], value=[0.05, 0.07], full_precision_keys=1, full_precision_values=3),
        protection=Protection(n_sink=1, recent=2, anchored_at_prompt=True),
        spec={"policy": "snapkv+quant", "params": {"snapkv": {"window": 4}, "quant": {"bits": 4}}, "budget": 5, "ratio": None},
        timings={"prefill_s": 0.1, "decode_s": 0.3, "step_s": [0.1, 0.1, 0.1, 0.0], "total_s": 0.4},
        read_bytes=[4096, 1024, 1024, 1024],
        summary_bytes=[256, 256, 320, 320],
        read_mask=np.arange(t.n_steps * t.n_layers * t.n_kv_heads * t.n_positions).reshape(
            t.n_steps, t.n_layers, t.n_kv_heads, t.n_positions) % 3 == 1,
        recall=np.linspace(0, 1, t.n_steps * t.n_layers, dtype=np.float32).reshape(t.n_steps, t.n_layers),
    )


def assert_same(back: Trace, trace: Trace) -> None:
    for f in dataclasses.fields(Trace):
        if f.name in UNSAVED_FIELDS:
            continue
        a, b = getattr(back, f.name), getattr(trace, f.name)
        if isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray) and a.dtype == b.dtype, f.name
            np.testing.assert_array_equal(a, b, err_msg=f.name)  # NaN equals NaN here
        else:
            assert a == b, f.name


def test_every_field_differs_from_its_default():
    t, defaults = every_field_set(), {f.name: f.default for f in dataclasses.fields(Trace)}
    for name, default in defaults.items():
        if default is not dataclasses.MISSING and name not in UNSAVED_FIELDS:
            value = getattr(t, name)
            assert (value is not None) if default is None else value != default, name
    assert t.protection != Protection()  # a default_factory field


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_every_field_survives_a_round_trip(tmp_path, suffix):
    trace = every_field_set()
    back = Trace.load(trace.save(tmp_path / f"t{suffix}"))
    assert_same(back, trace)
    assert isinstance(back.store_error, StoreError) and isinstance(back.protection, Protection)


def test_saved_json_is_strict(tmp_path):
    trace = every_field_set()
    trace.scores[0, 0, 7] = np.inf  # scores are finite in practice; were one not, it is written as null too
    data = strict_json(trace.save(tmp_path / "t.json").read_text())
    assert data["scores"][0][0][6] is None and data["scores"][0][0][7] is None
    assert data["kl_to_reference"][2] is None and data["lost_mass"][1] == [0.25, 0.5]
    assert "extra" not in data
    assert strict_json(trace.to_json()) == data
    with np.load(trace.save(tmp_path / "t.npz"), allow_pickle=False) as z:
        meta = strict_json(str(z["meta"]))
    assert meta["store_error"]["full_precision_keys"] == 1 and meta["protection"]["recent"] == 2


def test_a_trace_without_optional_parts_round_trips(tmp_path):
    trace = make_trace()  # no store error, no reference, nothing protected by default
    trace = dataclasses.replace(trace, protection=Protection())
    for suffix in (".json", ".npz"):
        back = Trace.load(trace.save(tmp_path / f"t{suffix}"))
        assert_same(back, trace)
        assert back.store_error is None and back.kl_to_reference is None
