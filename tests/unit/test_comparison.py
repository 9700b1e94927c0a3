"""The comparison core on the tiny random Llama: each run equals an independent ``engine.run``,
the full cache runs once, the recorded cut equals the one read off a run that ends at that step,
Stop keeps the finished policies, and the "why evicted" view by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kvviz.compare import run as comparison
from kvviz.compare.job import CompareJob
from kvviz.runtime.inputs import InputError
from kvviz.runtime import comparison as beside_full
from kvviz.runtime import engine
from kvviz.policies.spec import PolicySpec
from kvviz.record.why_evicted import evicted_positions, evicts_by_recency, most_evicted, why_evicted
from live_synthetic import make_trace
from tiny_comparison import NEW_TOKENS, PROMPT, SPECS, Tok, settings, tiny_comparison


@pytest.fixture(scope="module")
def result(tiny_llama):
    return tiny_comparison(tiny_llama)


def test_each_run_equals_an_independent_engine_run(tiny_llama, result):
    full = engine.run(tiny_llama, Tok(), PROMPT, "full", max_new_tokens=NEW_TOKENS)
    assert result.full.generated_ids == full.generated_ids and result.full.kv_bytes == full.kv_bytes
    for text, run in zip(SPECS, result.runs):
        spec = PolicySpec.parse(text)
        alone = beside_full.against_full(tiny_llama, Tok(), PROMPT, spec, max_new_tokens=NEW_TOKENS)  # the one-policy sequence
        assert run.spec == spec and run.trace.spec == spec.to_dict()
        assert run.trace.generated_ids == alone.policy.generated_ids
        assert run.trace.kv_bytes == alone.policy.kv_bytes and run.trace.kv_bytes_full == alone.policy.kv_bytes_full
        np.testing.assert_array_equal(run.trace.evicted_at_step, alone.policy.evicted_at_step)
        np.testing.assert_array_equal(run.trace.scores, alone.policy.scores)  # NaN where never scored, in both
        # a forced run read in chunks (kvviz.runtime.forced_chunks) against one built from the free run
        # (comparison.forced_from_free) differ by float32 rounding: KL of a few 1e-6 nats either way
        np.testing.assert_allclose(run.forced.kl_to_reference, alone.forced.kl_to_reference, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(run.forced.top1_agreement, alone.forced.top1_agreement)
        assert run.first_divergence(result.full) == alone.first_divergence


def test_the_full_cache_runs_once(tiny_llama, monkeypatch):
    calls = []
    real = engine.run

    def counting(model, tokenizer, prompt_ids, policy="full", *args, **kw):
        calls.append("full" if policy == "full" else "forced" if kw.get("forced_ids") else "free")
        return real(model, tokenizer, prompt_ids, policy, *args, **kw)

    monkeypatch.setattr(engine, "run", counting)
    out = tiny_comparison(tiny_llama)
    assert calls == ["full"] + ["free", "forced"] * len(SPECS)
    assert len(out.runs) == len(SPECS) and not out.stopped


def cut_from_trace(trace, step: int) -> np.ndarray:
    """(layers, kv_heads): the lowest score kept at ``step`` among those at least the highest
    evicted at ``step``, read off a Trace whose last step is ``step`` (its scores are that step's)."""
    ev = trace.evicted_at_step
    present_before = (trace.entered_at_step() <= step) & ((ev == -1) | (ev >= step))
    out = np.full(ev.shape[:2], np.nan)
    for layer in range(ev.shape[0]):
        for head in range(ev.shape[1]):
            scores = trace.scores[layer, head]
            evicted = present_before[layer, head] & (ev[layer, head] == step)
            kept = present_before[layer, head] & ~evicted
            if evicted.any():
                top_evicted = scores[evicted].max()
                out[layer, head] = scores[kept & (scores >= top_evicted)].min()
    return out


@pytest.mark.parametrize("index", [0, 2], ids=["h2o", "streaming_llm"])
def test_recorded_cut_equals_the_cut_of_a_run_that_ends_at_that_step(tiny_llama, result, index):
    run = result.runs[index]
    cuts = run.trace.extra["score_cut"]  # (steps, layers, kv_heads)
    assert cuts.shape == (NEW_TOKENS, 2, 2)
    for step in range(NEW_TOKENS):
        shorter = engine.run(tiny_llama, Tok(), PROMPT, run.spec, max_new_tokens=step + 1)
        np.testing.assert_allclose(cuts[step], cut_from_trace(shorter, step), rtol=1e-6)
    assert np.isfinite(cuts).all()  # these policies evict in every layer and head at every step


def test_selection_cut_by_hand():
    scores = torch.tensor([[5.0, 1.0, 3.0, 2.0, 4.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    # head 0 keeps 0, 2, 3 (3 is protected: it scores 2, below the evicted 4); head 1 keeps everything
    keep = torch.tensor([[0, 2, 3], [0, 1, 2]])
    keep_all = torch.tensor([[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])
    cut = comparison.selection_cut(scores, keep)
    assert cut[0] == 5.0  # the only kept entry scoring at least 4 (the highest evicted)
    assert torch.isnan(cut[1])  # it evicted the scores 4 and 5 and kept 1..3: all protected, none on merit
    assert torch.isnan(comparison.selection_cut(scores, keep_all)).all()


def test_why_evicted_on_real_runs(result):
    h2o, quant, streaming = (r.trace for r in result.runs)
    last = NEW_TOKENS - 1
    assert not evicts_by_recency(h2o) and evicts_by_recency(streaming)
    assert evicted_positions(quant, last) == []  # a store evicts nothing
    for position in evicted_positions(h2o, last):
        reason = why_evicted(h2o, position, last)
        assert reason.cells and not reason.by_recency
        for cell in reason.cells:
            assert cell.score is not None and cell.cut is not None and cell.score <= cell.cut
            assert cell.step == h2o.evicted_at_step[cell.layer, cell.head, position]
    position = evicted_positions(streaming, last)[0]
    text = why_evicted(streaming, position, last).summary()
    assert "evicts by recency, not by a score" in text and "the newest 20" in text  # budget 24, 4 sinks


def test_why_evicted_by_hand():
    trace = make_trace()  # position 2 evicted at step 0 everywhere (score 0.5); 3 at step 1, but head (1, 1) at 3
    cuts = np.full((4, 2, 2), np.nan, np.float32)
    cuts[0] = 2.0
    cuts[1] = [[0.75, 0.75], [0.75, 0.75]]
    trace.extra["score_cut"] = cuts
    assert most_evicted(trace, 0) == 2 and most_evicted(trace, 1) == 2  # 2 everywhere, 3 in three of four
    assert most_evicted(make_trace(evicted_at_step=np.full((2, 2, 10), -1, np.int32)), 3) is None
    reason = why_evicted(trace, 2, step=1)
    assert len(reason.cells) == 4 and {c.step for c in reason.cells} == {0}
    assert all(c.score == 0.5 and c.cut == 2.0 for c in reason.cells)
    assert "every layer and KV head by step 1" in reason.summary() and "median 0.5 against 2" in reason.summary()
    partial = why_evicted(trace, 3, step=1)
    assert len(partial.cells) == 3 and "3 of 4 layer × KV heads" in partial.summary()
    assert [r["below the cut by"] for r in partial.rows()] == pytest.approx([0.05] * 3)
    assert why_evicted(trace, 4, step=1).cells == () and "is held by every layer" in why_evicted(trace, 4, 1).summary()
    assert "not recorded" in why_evicted(make_trace(), 2, step=1).summary()  # a run without recorded cuts


def test_stop_keeps_the_policies_that_finished(tiny_llama):
    done = []
    out = tiny_comparison(tiny_llama, on_trace=lambda name, trace: done.append(name), should_stop=lambda: "p1.forced" in done)
    assert out.stopped and [r.spec.name for r in out.runs] == ["h2o"]
    assert done == ["full", "p1", "p1.forced"]


def test_the_job_stops_at_a_token_and_keeps_the_finished_policies(tiny_llama):
    job = CompareJob(tiny_llama, Tok(), PROMPT, settings(new_tokens=30))
    record = job._on_progress

    def stop_in_p2(progress):  # deterministic: Stop pressed while p2 generates its third token
        record(progress)
        if progress.name == "p2" and progress.tokens == 3:
            job.stop()

    job._on_progress = stop_in_p2
    assert job.start().wait(120)
    assert job.error is None and job.stopped and job.progress() == (1.0, "Stopped")
    assert job.result.stopped and [r.spec.name for r in job.result.runs] == ["h2o"]
    assert job.result.full.n_steps == 30 and job.result.runs[0].forced.n_steps == 30

    early = CompareJob(tiny_llama, Tok(), PROMPT, settings(new_tokens=30))
    early._on_progress = lambda p: early.stop() if p.name == "p1" else None
    assert early.start().wait(120)
    assert early.result is None and early.error is None and early.notice == "Stopped before a policy finished: nothing to compare."


def test_progress_counts_every_run(tiny_llama):
    seen = []
    tiny_comparison(tiny_llama, specs=SPECS[:2], on_progress=lambda p: seen.append((p.name, p.tokens, round(p.fraction, 4))))
    assert [n for n, t, _ in seen if t == 0] == ["full", "p1", "p1.forced", "p2", "p2.forced"]
    assert seen[-1] == ("p2.forced", NEW_TOKENS, 1.0)
    assert [f for _, _, f in seen] == sorted(f for _, _, f in seen)  # never goes back


class WordTokenizer:
    """One token per word (what ``encode_prompt`` asks of a tokenizer without a chat template)."""

    def __call__(self, text):
        return SimpleNamespace(input_ids=list(range(1, len(text.split()) + 1)))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(specs=SPECS[:1]), "Compare 2 to 4 policies, not 1"),
        (dict(specs=("h2o", "window:budget=50")), "p2 (window:budget=50): window: budget 50 is larger than the prompt (40 tokens)"),
        (dict(new_tokens=0), "New tokens must be between 1 and 256"),
        (dict(prompt_text="  "), "The prompt is empty"),
    ],
)
def test_prepare_names_the_problem(change, message):
    kw = dict(prompt_text=" ".join(["word"] * 40))
    kw.update({k: v for k, v in change.items() if k == "prompt_text"})
    s = settings(change.get("specs", SPECS), change.get("new_tokens", NEW_TOKENS), **kw)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        comparison.prepare(WordTokenizer(), s, max_context=256)


def test_prepare_checks_the_context():
    s = settings(prompt_text=" ".join(["word"] * 40), new_tokens=20)
    with pytest.raises(InputError, match="exceeds the model's context of 50"):
        comparison.prepare(WordTokenizer(), s, max_context=50)
    assert comparison.prepare(WordTokenizer(), s, max_context=256) == list(range(1, 41))
