"""On a CUDA host (marked gpu, skipped elsewhere): runs on lanes (own threads and CUDA streams,
``kvviz.runtime.lanes``) give, in bf16 and from CUDA graphs, what the same runs give one after
another; and several runs at once take less wall time than in turn."""

import dataclasses
import time

import numpy as np
import pytest

from kvviz.record.examples import long_document
from kvviz.record.text import encode_prompt
from kvviz.runtime import comparison, fused, lanes
from kvviz.sweep import run as sweep

pytestmark = pytest.mark.gpu

TEXT = "Tell me about the history of lighthouses, their keepers and the lenses they used. " * 12


def test_the_live_runs_at_once_equal_the_runs_in_turn(gpu_model, monkeypatch):
    ids = encode_prompt(gpu_model.tokenizer, TEXT, chat=True)
    kw = dict(max_new_tokens=48, stop_at_eos=False)
    monkeypatch.setattr(lanes, "count", lambda model: 1)
    # both sides decode fused from their first steady step: the fused policy steps, built in the
    # background by a first run, round in bf16 otherwise than the eager steps a run takes meanwhile
    comparison.against_full_runs(gpu_model.model, gpu_model.tokenizer, ids, "h2o:budget=96", **kw)
    fused.wait()
    in_turn = dict(comparison.against_full_runs(gpu_model.model, gpu_model.tokenizer, ids, "h2o:budget=96", **kw))
    monkeypatch.setattr(lanes, "count", lambda model: 4)
    monkeypatch.setenv("KVVIZ_LIVE_LANES", "1")  # off by default: one run in three failed on an H200 (see lanes.live_at_once)
    at_once = dict(comparison.against_full_runs(gpu_model.model, gpu_model.tokenizer, ids, "h2o:budget=96", **kw))
    for phase in ("policy", "full", "forced"):
        a, b = at_once[phase], in_turn[phase]
        assert a.timings["decode_path"] == "graph", a.timings
        assert a.generated_ids == b.generated_ids, phase
        np.testing.assert_array_equal(a.evicted_at_step, b.evicted_at_step)
        np.testing.assert_array_equal(a.chosen_logprob, b.chosen_logprob)
    np.testing.assert_array_equal(at_once["forced"].kl_to_reference, in_turn["forced"].kl_to_reference)


def test_a_sweep_on_lanes_gives_the_same_rows_sooner(gpu_model, monkeypatch):
    settings = sweep.SweepSettings(policies=("streaming_llm", "h2o", "tova", "snapkv"), ratios=(0.1, 0.3),
                                   text=long_document(), context=512, continuation=96)
    model, tok = gpu_model.model, gpu_model.tokenizer
    sweep.run(model, tok, settings)  # warm-up: asks for every point's fused steps
    fused.wait()  # (a point decoding eagerly until its build ends rounds otherwise in bf16)
    monkeypatch.setattr(lanes, "count", lambda model: 1)
    t = time.perf_counter()
    in_turn = sweep.run(model, tok, settings)
    in_turn_s = time.perf_counter() - t
    monkeypatch.setattr(lanes, "count", lambda model: 4)
    t = time.perf_counter()
    at_once = sweep.run(model, tok, settings)
    at_once_s = time.perf_counter() - t
    drop = lambda row: {k: v for k, v in dataclasses.asdict(row).items() if k != "seconds"}  # noqa: E731
    assert [drop(r) for r in at_once.rows] == [drop(r) for r in in_turn.rows]
    assert at_once_s < 0.8 * in_turn_s, (at_once_s, in_turn_s)
