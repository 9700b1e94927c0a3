"""Sweeps on the embedded SmolLM2, checked against independent computations: engine.run called
directly, one plain transformers forward with a float64 log-softmax, hand arithmetic of bytes,
and the pass key itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kvviz.runtime import engine
from kvviz.sweep import run as sweep
from kvviz.record.examples import long_document, passkey_prompt
from kvviz.policies import PolicyError
from kvviz.record.text import PromptError, encode_prompt

CONTEXT, CONTINUATION = 48, 12


@pytest.fixture(scope="module")
def ppl_sweep(smollm):
    settings = sweep.SweepSettings(
        policies=("full", "window:budget=4", "h2o:recent=4"), ratios=(0.25,), text=long_document(),
        context=CONTEXT, continuation=CONTINUATION,
    )
    progress = []
    result = sweep.run(smollm.model, smollm.tokenizer, settings, on_progress=progress.append)
    return result, progress


def rows_by_series(result):
    return {r.series: r for r in result.rows}


def test_rows_equal_independent_engine_runs(smollm, ppl_sweep):
    result, _ = ppl_sweep
    ids = smollm.tokenizer(long_document()).input_ids
    prompt, forced = ids[:CONTEXT], ids[CONTEXT : CONTEXT + CONTINUATION]
    full = engine.run(smollm.model, smollm.tokenizer, prompt, "full", forced_ids=forced, keep_logprobs=True)
    reference = full.extra.pop("logprobs")
    h2o = engine.run(
        smollm.model, smollm.tokenizer, prompt, "h2o", params={"recent": 4}, ratio=0.25, forced_ids=forced,
        reference_logprobs=reference,
    )
    row = rows_by_series(result)["h2o:recent=4"]
    assert (row.policy, row.params, row.ratio, row.budget) == ("h2o", "recent=4", 0.25, round(0.25 * CONTEXT))
    assert row.ppl == pytest.approx(math.exp(-np.mean(h2o.chosen_logprob.astype(np.float64))), rel=1e-6)
    assert row.kl_full == pytest.approx(float(np.mean(h2o.kl_to_reference)), abs=1e-6)
    assert row.top1_agree == pytest.approx(float(np.mean(h2o.top1_agreement)))
    assert row.kv_bytes == h2o.kv_bytes[-1] and row.kv_bytes_full == h2o.kv_bytes_full[-1]
    assert result.reference["ppl"] == pytest.approx(math.exp(-np.mean(full.chosen_logprob.astype(np.float64))), rel=1e-6)


def test_full_cache_perplexity_equals_one_transformers_forward(smollm, ppl_sweep):
    result, _ = ppl_sweep
    ids = smollm.tokenizer(long_document()).input_ids[: CONTEXT + CONTINUATION]
    with torch.no_grad():
        logits = smollm.model(input_ids=torch.tensor([ids])).logits[0].double()  # (tokens, vocab)
    logprobs = logits.log_softmax(-1)
    # the token at position p is predicted by the logits at p - 1: the first forced token by the prompt's last
    targets = torch.tensor(ids[CONTEXT:])
    nll = -logprobs[CONTEXT - 1 : CONTEXT + CONTINUATION - 1].gather(1, targets[:, None])[:, 0]
    expected = math.exp(float(nll.mean()))
    assert result.reference["ppl"] == pytest.approx(expected, rel=1e-4)
    assert rows_by_series(result)["full"].ppl == pytest.approx(expected, rel=1e-4)


def test_full_agrees_with_itself_and_a_tiny_window_does_not(ppl_sweep):
    result, _ = ppl_sweep
    rows = rows_by_series(result)
    full, tiny = rows["full"], rows["window"]
    assert full.kl_full == pytest.approx(0.0, abs=1e-5) and full.top1_agree == 1.0
    assert tiny.budget == 4
    assert tiny.kl_full > 0.1 and tiny.top1_agree < 1.0 and tiny.ppl > full.ppl


def test_bytes_by_hand(smollm, ppl_sweep):
    result, _ = ppl_sweep
    per_token = smollm.summary.kv_bytes_per_token  # 2 * layers * kv_heads * head_dim * 4 bytes
    rows = rows_by_series(result)
    # at the last step the cache has read the prompt and all forced tokens but the last
    seen = CONTEXT + CONTINUATION - 1
    assert rows["full"].kv_bytes == rows["full"].kv_bytes_full == seen * per_token
    assert rows["window"].kv_bytes == rows["window"].kv_bytes_peak == 4 * per_token
    assert rows["window"].kv_pct == pytest.approx(100 * 4 / seen)
    assert result.reference["kv_bytes_full"] == seen * per_token


def test_progress_counts_every_run(ppl_sweep):
    result, progress = ppl_sweep
    assert [p.done for p in progress] == [0, 1, 2, 3, 4]
    assert all(p.total == 4 for p in progress)
    assert progress[0].label == "full cache (reference)" and progress[-1].label == ""
    assert not result.stopped and len(result.rows) == 3


def test_csv_has_the_issue_columns(ppl_sweep):
    result, _ = ppl_sweep
    lines = sweep.rows_csv(result.rows).splitlines()
    header = lines[0].split(",")
    for column in ["policy", "params", "ratio", "budget", "kv_bytes", "kv_bytes_full", "ppl", "kl_full", "top1_agree", "seconds"]:
        assert column in header
    assert len(lines) == 1 + len(result.rows)
    window = dict(zip(header, lines[2].split(",")))
    assert window["policy"] == "window" and window["budget"] == "4" and window["ratio"] == ""


def test_passkey_grid_full_finds_it_and_a_tiny_window_does_not(smollm):
    settings = sweep.SweepSettings(
        policies=("full", "window:budget=8"), task="passkey", depths=(0.5,), lengths=(100,), new_tokens=10,
    )
    result = sweep.run(smollm.model, smollm.tokenizer, settings)
    text, key = passkey_prompt(100, 0.5, seed=0)
    ids = encode_prompt(smollm.tokenizer, text, chat=True)
    rows = rows_by_series(result)
    full, window = rows["full"], rows["window"]
    assert (full.depth, full.length, full.prompt_tokens) == (0.5, 100, len(ids))
    assert full.found and key in full.answer
    direct = engine.run(smollm.model, smollm.tokenizer, ids, "full", max_new_tokens=10)
    assert full.answer == direct.generated_text.strip()
    assert not window.found and key not in window.answer  # 8 entries hold only the question's last tokens
    lines = sweep.rows_csv(result.rows).splitlines()
    assert lines[0].startswith("policy,params,ratio,budget,depth,length,prompt_tokens,found,answer")


def test_stop_returns_the_runs_finished(smollm):
    settings = sweep.SweepSettings(policies=("window",), ratios=(0.5, 0.75), text=long_document(), context=16, continuation=4)
    seen = []

    def on_progress(p):
        seen.append(p.done)

    result = sweep.run(smollm.model, smollm.tokenizer, settings, on_progress=on_progress, should_stop=lambda: len(seen) >= 2)
    assert result.stopped and result.reference is not None and result.rows == []


def test_a_sweeps_runs_build_no_fused_policy_steps(smollm, monkeypatch):
    """Each point of a sweep has its own budget, so its own fused step: a build of seconds for a run
    of about one (on an H200 a cold 41-run sweep took 206 s one at a time with the builds, 57 s without)."""
    asked = []
    real_run = engine.run
    monkeypatch.setattr(engine, "run", lambda *a, **k: asked.append(k.get("fused_steps")) or real_run(*a, **k))
    settings = sweep.SweepSettings(policies=("h2o",), ratios=(0.5,), text=long_document(), context=16, continuation=4)
    sweep.run(smollm.model, smollm.tokenizer, settings)
    assert asked == [False, False]  # the reference and the point


def test_a_kept_reference_is_reused_only_by_a_sweep_of_the_same_tokens(smollm, ppl_sweep, monkeypatch):
    first, _ = ppl_sweep
    assert first.reference_logprobs is None  # not kept unless asked: a stored result holds no (steps, vocab) tensor
    settings = first.settings
    kept = sweep.run(smollm.model, smollm.tokenizer, settings, keep_reference=True)
    assert kept.reference_logprobs.shape[0] == CONTINUATION
    full_runs = []
    real_run = engine.run
    monkeypatch.setattr(engine, "run", lambda *a, **k: (full_runs.append(a[3]) if a[3] == "full" else None) or real_run(*a, **k))
    again = sweep.run(smollm.model, smollm.tokenizer, settings, reuse=kept)
    assert full_runs == [] and again.reference == kept.reference
    # the CPU's runs repeat to the bit: the rows against the reused reference are the rows against its own
    assert [r.to_dict() | {"seconds": 0} for r in again.rows] == [r.to_dict() | {"seconds": 0} for r in first.rows]
    other = sweep.run(smollm.model, smollm.tokenizer, sweep.SweepSettings(
        policies=("window:budget=4",), ratios=(0.25,), text=long_document(), context=CONTEXT, continuation=CONTINUATION - 2), reuse=kept)
    assert full_runs == ["full"] and other.reference["continuation"] == CONTINUATION - 2


# ------------------------------------------------------------------------------ the plan, no forward


def test_expand_runs_budgetless_policies_once():
    settings = sweep.SweepSettings(policies=("full", "quant:bits=8", "h2o", "snapkv:window=8,ratio=0.1", "h2o"), ratios=(0.1, 0.5))
    points = [p.to_text() for p in sweep.expand(settings)]
    assert points == ["full", "quant:bits=8", "h2o:ratio=0.1", "h2o:ratio=0.5", "snapkv:window=8,ratio=0.1"]
    assert [p.budget for p in sweep.expand(sweep.SweepSettings(policies=("window",), budgets=(8, 16)))] == [8, 16]


def test_series_keep_the_parameters_as_written():
    grid = sweep.points(sweep.SweepSettings(policies=("snapkv: window=32, ratio=0.1", "quant:bits=4", "snapkv"), ratios=(0.1,)))
    # snapkv alone is the same point as snapkv:window=32 at ratio 0.1 (its default window): run once
    assert [(spec.to_text(), series) for spec, series in grid] == [("snapkv:ratio=0.1", "snapkv:window=32"), ("quant", "quant:bits=4")]


@pytest.mark.parametrize(
    "settings, error, message",
    [
        (dict(policies=("h2o",)), PolicyError, "give ratios or budgets"),
        (dict(policies=("h2o",), ratios=(0.1,), budgets=(8,)), PolicyError, "not both"),
        (dict(policies=("nope",), ratios=(0.1,)), PolicyError, "Unknown policy"),
        (dict(policies=("h2o",), budgets=(64,), context=32), PolicyError, "larger than the prompt"),
        (dict(policies=("streaming_llm",), ratios=(0.1,), context=32), PolicyError, "no recent window"),
        (dict(policies=("full",), text="too short", context=32), PromptError, "needs 48"),
        (dict(policies=("full",), task="translate"), PolicyError, "task must be"),
        (dict(policies=("full",), task="passkey", depths=(1.5,)), PromptError, "depth"),
    ],
)
def test_bad_sweeps_fail_before_any_forward(smollm, settings, error, message):
    settings = {"text": long_document(), "context": 32, "continuation": 16, **settings}
    with pytest.raises(error, match=message):
        sweep.plan(smollm.tokenizer, sweep.SweepSettings(**settings))


# ------------------------------------------------------------------------------ the page's job and estimate


def test_estimate_by_hand():
    from kvviz.policies.spec import PolicySpec
    from kvviz.sweep.job import SLOW_POLICY_FACTOR, Speed, estimate

    speed = Speed("cpu", prefill_s_per_token=0.01, step_s=0.1, measured_tokens=128)
    runs = [
        sweep.PlannedRun(None, list(range(100)), 20),  # reference, read in chunks: 1 s + 20 tokens at 0.01 s
        sweep.PlannedRun(PolicySpec.parse("window:ratio=0.5"), list(range(100)), 20),  # plain: 1 + 2 s
        sweep.PlannedRun(PolicySpec.parse("h2o:ratio=0.5"), list(range(100)), 20),  # scores: 1 + 2 s, up to 1 + 2 * factor
        sweep.PlannedRun(PolicySpec.parse("snapkv:ratio=0.5"), list(range(100)), 20),  # prompt-only, in chunks: 1.2 s
        sweep.PlannedRun(PolicySpec.parse("quant"), list(range(100)), 20),  # per-token quantization, in chunks: 1.2 s
        sweep.PlannedRun(PolicySpec.parse("kivi"), list(range(100)), 20),  # steps, quantizes: 1 + 2 s, up to 1 + 2 * factor
    ]
    est = estimate(sweep.Plan(sweep.SweepSettings(policies=("window",)), runs), speed)
    assert est.low_s == pytest.approx(1.2 * 3 + 3.0 * 3) and est.high_s == pytest.approx(1.2 * 3 + 3.0 + 2 * (1.0 + 2.0 * SLOW_POLICY_FACTOR))
    assert "about 13 s to 17 s for 6 runs on cpu" in est.text() and "estimate" in est.text()
    passkey = estimate(sweep.Plan(sweep.SweepSettings(task="passkey", policies=("window",)), runs[:1]), speed)
    assert passkey.low_s == pytest.approx(3.0)  # generated, not forced: a step per token


def test_job_stops_and_keeps_the_finished_runs(smollm):
    from kvviz.sweep.job import SweepJob

    settings = sweep.SweepSettings(policies=("window", "streaming_llm"), ratios=(0.5, 0.75), text=long_document(), context=16, continuation=4)
    job = SweepJob(smollm.model, smollm.tokenizer, settings)
    record = job._on_progress

    def stop_after_two(progress):  # deterministic: Stop pressed once two runs are done (a run here takes ms)
        record(progress)
        if progress.done >= 2:
            job.stop()

    job._on_progress = stop_after_two
    job.start()
    assert job.wait(300) and job.error is None
    result = job.result
    assert result.stopped and 1 <= len(result.rows) < 4
    assert job.progress() == (1.0, "Stopped")
