"""The Live page's comparison skips the third decode when it would replay the second: a greedy
policy run that chose exactly the full cache's tokens, teacher-forced on them, feeds the same
tokens into the same cache. The trace it then builds from the free run must be the one a real
teacher-forced run gives, field for field; a run that left the full cache's tokens still gets its
own teacher-forced decode."""

import dataclasses

import numpy as np
import pytest

from kvviz.record.text import encode_prompt
from kvviz.record.trace import ARRAY_FIELDS
from kvviz.runtime import comparison, engine

NEW = 6


@pytest.fixture(scope="module")
def ids(smollm):
    return encode_prompt(smollm.tokenizer, "Name three colours of the rainbow.", chat=True)


def counting(monkeypatch):
    calls = []
    real = engine.run

    def run(*args, **kw):
        calls.append(kw.get("forced_ids") is not None)
        return real(*args, **kw)

    monkeypatch.setattr(engine, "run", run)
    return calls


@pytest.mark.parametrize("spec", ["full", "tova"])
def test_the_forced_trace_built_from_the_free_run_is_the_forced_runs(smollm, ids, spec, monkeypatch):
    m, tok = smollm.model, smollm.tokenizer
    budget = None if spec == "full" else len(ids) - 2  # tova evicts from the first step and still says what full says (measured)
    calls = counting(monkeypatch)
    runs = dict(comparison.against_full_runs(m, tok, ids, spec, budget=budget, max_new_tokens=NEW))
    assert runs["policy"].generated_ids == runs["full"].generated_ids  # the case this covers
    assert calls == [False, False] and runs["forced"].extra["forced_from_free_run"]  # no third decode
    if spec != "full":
        assert (runs["forced"].evicted_at_step[..., : len(ids)] >= 0).any()  # the policy did evict
    full = engine.run(m, tok, ids, "full", max_new_tokens=NEW, keep_logprobs=True)
    # stepped as the free run was (a forced run of the full cache is otherwise read in chunks,
    # which round differently: kvviz.runtime.forced_chunks)
    real = engine.run(m, tok, ids, spec, budget=budget, forced_ids=full.generated_ids,
                      reference_logprobs=full.extra.pop("logprobs"), forced_chunk=0)
    got = runs["forced"]
    for f in dataclasses.fields(real):
        if f.name in ("timings", "extra"):
            continue
        a, b = getattr(got, f.name), getattr(real, f.name)
        if f.name in ARRAY_FIELDS and a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=f.name)
        else:
            assert a == b, f.name
    assert got.teacher_forced and got.stopped_by == "max_new_tokens"
    assert runs["policy"].kl_to_reference is None and not runs["policy"].teacher_forced  # the free run's own record unchanged


def test_a_run_that_left_the_full_caches_tokens_is_teacher_forced(smollm, ids, monkeypatch):
    calls = counting(monkeypatch)
    runs = dict(comparison.against_full_runs(smollm.model, smollm.tokenizer, ids, "window", budget=4, max_new_tokens=NEW))
    assert runs["policy"].generated_ids != runs["full"].generated_ids
    assert calls == [False, False, True] and "forced_from_free_run" not in runs["forced"].extra
    assert runs["forced"].generated_ids == runs["full"].generated_ids


def test_sampling_is_always_teacher_forced(smollm, ids, monkeypatch):
    calls = counting(monkeypatch)
    runs = dict(comparison.against_full_runs(smollm.model, smollm.tokenizer, ids, "full", max_new_tokens=3, sample=True, seed=3))
    assert calls == [False, False, True] and runs["forced"].teacher_forced
