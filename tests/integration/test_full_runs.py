"""The full cache's run of a prompt kept for the next comparison of the same prompt (``FullRuns``):
a second policy on the same prompt gives what its own three runs give (the CPU repeats a run to
the last bit), with two runs instead of three; another prompt or other options run the full cache
again; the store holds a bounded number of runs and bytes, and no stopped run."""

from __future__ import annotations

import numpy as np
import pytest

from kvviz.live.job import FULL_RUNS, LiveJob
from kvviz.live.run import REUSED, LiveRequest
from kvviz.policies.spec import PolicySpec
from kvviz.record.text import encode_prompt
from kvviz.record.trace import ARRAY_FIELDS
from kvviz.runtime import comparison, engine

NEW = 8


@pytest.fixture(scope="module")
def ids(smollm):
    return encode_prompt(smollm.tokenizer, "Name three colours of the rainbow.", chat=True)


def counted(monkeypatch) -> list:
    """engine.run, counting the full cache's runs."""
    full_runs, real = [], engine.run
    monkeypatch.setattr(engine, "run", lambda *a, **k: (full_runs.append(1) if a[3] == "full" else None) or real(*a, **k))
    return full_runs


def same(a, b):
    for name in ("generated_ids", "tokens", "stopped_by", "teacher_forced"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ARRAY_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_a_second_policy_on_the_same_prompt_takes_the_full_run_kept(smollm, ids, monkeypatch):
    model, tok = smollm.model, smollm.tokenizer
    alone = dict(comparison.against_full_runs(model, tok, ids, "tova:budget=12", max_new_tokens=NEW, stop_at_eos=False))
    store = comparison.FullRuns()
    full_runs = counted(monkeypatch)
    dict(comparison.against_full_runs(model, tok, ids, "h2o:budget=12", max_new_tokens=NEW, stop_at_eos=False, full_runs=store))
    second = dict(comparison.against_full_runs(model, tok, ids, "tova:budget=12", max_new_tokens=NEW, stop_at_eos=False, full_runs=store))
    assert full_runs == [1]  # the second comparison ran the policy and the forced run only
    assert second["full"].extra["full_run_reused"] and "full_run_reused" not in alone["full"].extra
    for phase in ("policy", "full", "forced"):
        same(second[phase], alone[phase])  # the KL and top-1 against the kept log-probs are those against a fresh run's
    assert second["forced"].kl_to_reference.max() > 0
    dict(comparison.against_full_runs(model, tok, ids, "tova:budget=12", max_new_tokens=NEW - 1, stop_at_eos=False, full_runs=store))
    dict(comparison.against_full_runs(model, tok, ids[:-1], "tova:budget=12", max_new_tokens=NEW, stop_at_eos=False, full_runs=store))
    assert full_runs == [1, 1, 1]  # another length, another prompt: the full cache runs again


def test_the_store_keeps_a_bounded_number_of_runs_and_bytes_and_no_stopped_run(smollm, ids):
    model, tok = smollm.model, smollm.tokenizer
    runs = {n: engine.run(model, tok, ids, "full", max_new_tokens=n, stop_at_eos=False, keep_logprobs=True) for n in (2, 3, 4, 8)}
    key = lambda n: comparison.FullRuns.key(model, ids, engine.DecodeOptions(max_new_tokens=n, stop_at_eos=False))  # noqa: E731
    vocab_bytes = runs[2].extra["logprobs"][0].nbytes  # one step's log-probs
    store = comparison.FullRuns(entries=2, max_bytes=7 * vocab_bytes)
    for n in (2, 3, 4, 8):
        store.put(model, key(n), runs[n], runs[n].extra["logprobs"])
    # 2 went when 4 came (two runs at most); 8 alone is past the bytes: not kept, and nothing left for it
    assert store.get(model, key(2)) is None and store.get(model, key(8)) is None
    for n in (3, 4):
        trace, logprobs = store.get(model, key(n))
        assert trace.generated_ids == runs[n].generated_ids and logprobs.shape[0] == n
    assert store.get(object(), key(3)) is None  # another model under the same id is not this one
    heard = []  # Stop after the first token (a Stop during the prefill raises instead)
    stopped = engine.run(model, tok, ids, "full", max_new_tokens=6, stop_at_eos=False, keep_logprobs=True,
                         on_step=heard.append, should_stop=lambda: bool(heard))
    assert stopped.stopped_by == "user"
    store.put(model, key(6), stopped, stopped.extra["logprobs"])
    assert store.get(model, key(6)) is None


def test_the_live_page_names_a_full_run_it_reused(smollm, ids):
    def live(policy: str):
        request = LiveRequest(spec=PolicySpec.of(policy), max_new_tokens=NEW, prompt_ids=list(ids))
        job = LiveJob(smollm.model, smollm.tokenizer, request).start()
        assert job.wait(600)
        return job.result

    first, second = live("window:budget=12"), live("h2o:budget=12")
    assert "full" in first.wall_s and REUSED not in first.wall_s
    assert REUSED in second.wall_s and "full" not in second.wall_s
    assert second.full.generated_ids == first.full.generated_ids and len(FULL_RUNS._runs) == 1
