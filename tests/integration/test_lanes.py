"""Runs at once on lanes (``kvviz.runtime.lanes``): a teacher-forced run that follows another run's
tokens as they come gives what the same run forced on the finished tokens gives; the Live page's
three runs at once give the three sequential runs' traces; a sweep's points at once give the
sequential sweep's rows. On a GPU lanes are threads with their own CUDA streams; here (the CPU)
the same threads, with ``lanes.count`` patched (a CPU runs one at a time by default) and the Live
comparison's lanes asked for (``KVVIZ_LIVE_LANES=1``, off by default)."""

import dataclasses
import threading
import time

import numpy as np
import pytest

from kvviz.record.examples import long_document
from kvviz.record.text import encode_prompt
from kvviz.record.trace import ARRAY_FIELDS
from kvviz.runtime import comparison, engine, lanes
from kvviz.runtime.jobs import Stopped
from kvviz.sweep import run as sweep

NEW = 8


@pytest.fixture(scope="module")
def ids(smollm):
    return encode_prompt(smollm.tokenizer, "Name three colours of the rainbow.", chat=True)


def same_trace(a, b, skip=("timings", "extra")):
    for f in dataclasses.fields(a):
        if f.name in skip:
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in ARRAY_FIELDS or isinstance(x, np.ndarray):
            if x is None or y is None:
                assert x is None and y is None, f.name
            else:
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f.name)
        else:
            assert x == y, f.name


def test_a_feed_waits_for_each_token_and_ends_with_its_run():
    feed = lanes.TokenFeed()
    got = []
    reader = threading.Thread(target=lambda: got.extend([feed.get(0), feed.get(1), feed.has(2), feed.get(2)]))
    reader.start()
    time.sleep(0.05)
    assert reader.is_alive()  # waiting for token 0
    feed.put(7)
    feed.put(9)
    feed.close()
    reader.join(5)
    assert got == [7, 9, False, None] and feed.logprobs() is None


def test_following_a_run_as_it_goes_equals_forcing_its_finished_tokens(smollm, ids):
    model, tok = smollm.model, smollm.tokenizer
    full = engine.run(model, tok, ids, "full", max_new_tokens=NEW, stop_at_eos=False, keep_logprobs=True)
    reference = full.extra.pop("logprobs")
    forced = engine.run(model, tok, ids, "h2o:budget=12", forced_ids=full.generated_ids, reference_logprobs=reference)

    feed = lanes.TokenFeed()

    def produce():  # the tokens come slowly, one by one, then the log-probs
        for token in full.generated_ids:
            time.sleep(0.02)
            feed.put(token)
        feed.close(reference)

    producer = threading.Thread(target=produce)
    producer.start()
    followed = engine.run(model, tok, ids, "h2o:budget=12", max_new_tokens=NEW + 5, forced_feed=feed)
    producer.join()
    assert followed.teacher_forced and followed.n_steps == NEW
    same_trace(followed, forced)
    assert followed.kl_to_reference is not None and followed.kl_to_reference.max() > 0


def test_a_forced_run_whose_feed_ends_without_a_token_stops(smollm, ids):
    feed = lanes.TokenFeed()
    feed.close()
    with pytest.raises(Stopped):
        engine.run(smollm.model, smollm.tokenizer, ids, "h2o:budget=12", max_new_tokens=NEW, forced_feed=feed)


@pytest.mark.parametrize("stop_at_eos", [False, True])  # with EOS: the full cache's run ends early (12 tokens)
def test_the_three_runs_at_once_equal_the_three_in_turn(smollm, ids, monkeypatch, stop_at_eos):
    model, tok = smollm.model, smollm.tokenizer
    if stop_at_eos:
        ids = encode_prompt(tok, "What is 2+2?", chat=True)
    # a forced run that follows a feed steps; in turn, snapkv's forced run would be read in chunks
    # (kvviz.runtime.forced_chunks), rounded differently: both step here, to compare bit for bit
    kw = dict(max_new_tokens=24, stop_at_eos=stop_at_eos, forced_chunk=0)
    in_turn = dict(comparison.against_full_runs(model, tok, ids, "snapkv:budget=12", **kw))
    heard = []
    monkeypatch.setattr(lanes, "count", lambda model: 3)
    monkeypatch.setenv("KVVIZ_LIVE_LANES", "1")
    at_once = dict(comparison.against_full_runs(model, tok, ids, "snapkv:budget=12", on_full_step=lambda e: heard.append(e.token_id), **kw))
    assert list(at_once) == ["policy", "full", "forced"]
    for phase in at_once:
        same_trace(at_once[phase], in_turn[phase], skip=("timings", "extra", "stopped_by"))
    assert heard == at_once["full"].generated_ids
    assert at_once["forced"].generated_ids == at_once["full"].generated_ids and at_once["forced"].teacher_forced
    if stop_at_eos:
        assert at_once["full"].stopped_by == "eos" and at_once["full"].n_steps < 24


def test_a_consumer_that_stops_after_the_policy_stops_the_other_lanes(smollm, ids, monkeypatch):
    monkeypatch.setattr(lanes, "count", lambda model: 3)
    monkeypatch.setenv("KVVIZ_LIVE_LANES", "1")
    runs = comparison.against_full_runs(smollm.model, smollm.tokenizer, ids, "snapkv:budget=12", max_new_tokens=200, stop_at_eos=False)
    phase, _ = next(runs)
    assert phase == "policy"
    t = time.perf_counter()
    runs.close()  # the full and forced runs end at their next token: the close returns quickly
    assert time.perf_counter() - t < 20
    assert not [t for t in threading.enumerate() if t.name.startswith("kvviz-lane")]


def test_a_sweep_on_lanes_gives_the_sequential_rows(smollm, monkeypatch):
    settings = sweep.SweepSettings(
        task="ppl", policies=("window", "h2o", "snapkv"), ratios=(0.1, 0.3), text=long_document(), context=48, continuation=8
    )
    model, tok = smollm.model, smollm.tokenizer
    in_turn = sweep.run(model, tok, settings)
    monkeypatch.setattr(lanes, "count", lambda model: 3)
    at_once = sweep.run(model, tok, settings)
    drop = lambda row: {k: v for k, v in dataclasses.asdict(row).items() if k != "seconds"}  # noqa: E731
    assert [drop(r) for r in at_once.rows] == [drop(r) for r in in_turn.rows]
    assert at_once.reference["ppl"] == in_turn.reference["ppl"] and len(at_once.rows) == 6
