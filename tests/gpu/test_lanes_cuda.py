"""On a CUDA host (marked gpu, skipped elsewhere): runs on lanes (own threads and CUDA streams,
``kvviz.runtime.lanes``) give, in bf16 and from CUDA graphs, what the same runs give one after
another; and several runs at once take less wall time than in turn."""

import dataclasses
import time

import numpy as np
import pytest

from kvviz.record import metrics
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
    a, b = at_once["policy"], in_turn["policy"]
    assert a.timings["decode_path"] == "graph", a.timings
    assert a.generated_ids == b.generated_ids
    np.testing.assert_array_equal(a.evicted_at_step, b.evicted_at_step)
    np.testing.assert_array_equal(a.chosen_logprob, b.chosen_logprob)
    # the full cache's bf16 run is not reproducible to the last bit on a GPU, in turn either (on an
    # H200 its log-probs first differed at step 8 or 74 of three runs, eagerly too): the full and the
    # forced runs agree until a step where the run in turn had two tokens within rounding of each other
    steps = same_until_a_near_tie(at_once["full"], in_turn["full"])
    a, b = at_once["forced"], in_turn["forced"]
    assert a.generated_ids[:steps] == b.generated_ids[:steps]
    np.testing.assert_allclose(a.chosen_logprob[:steps], b.chosen_logprob[:steps], atol=0.05)
    np.testing.assert_allclose(a.kl_to_reference[:steps], b.kl_to_reference[:steps], atol=0.05)


def same_until_a_near_tie(a, b) -> int:
    """Steps the two greedy runs agree on; where they part, ``b``'s two tokens are within 0.05 nats."""
    assert a.timings["decode_path"] == "graph", a.timings
    part = metrics.first_divergence(b.generated_ids, a.generated_ids)
    steps = len(b.generated_ids) if part is None else part
    np.testing.assert_allclose(a.chosen_logprob[:steps], b.chosen_logprob[:steps], atol=0.05)
    if part is not None:
        ids, probs = list(b.topk_ids[part]), np.log(b.topk_probs[part])
        assert a.generated_ids[part] in ids, (part, a.generated_ids[part], ids)
        assert probs[0] - probs[ids.index(a.generated_ids[part])] < 0.05, (part, probs)
    return steps


def test_a_sweep_on_lanes_gives_the_same_rows_sooner(gpu_model, monkeypatch):
    settings = sweep.SweepSettings(policies=("streaming_llm", "h2o", "tova", "snapkv"), ratios=(0.1, 0.3),
                                   text=long_document(), context=512, continuation=96)
    model, tok = gpu_model.model, gpu_model.tokenizer
    sweep.run(model, tok, settings)  # warm-up: graph captures, the allocator (a sweep builds no policy steps)
    fused.wait()
    monkeypatch.setattr(lanes, "count", lambda model: 1)
    t = time.perf_counter()
    in_turn = sweep.run(model, tok, settings, keep_reference=True)
    in_turn_s = time.perf_counter() - t
    monkeypatch.setattr(lanes, "count", lambda model: 4)
    t = time.perf_counter()
    at_once = sweep.run(model, tok, settings, reuse=in_turn)  # the full cache's bf16 run differs in its last bits from run to run
    at_once_s = time.perf_counter() - t
    drop = lambda row: {k: v for k, v in dataclasses.asdict(row).items() if k != "seconds"}  # noqa: E731
    assert [drop(r) for r in at_once.rows] == [drop(r) for r in in_turn.rows]
    assert at_once_s < 0.8 * in_turn_s, (at_once_s, in_turn_s)
