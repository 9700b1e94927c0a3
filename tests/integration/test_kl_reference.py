"""The per-step KL(full || policy) and top-1 agreement that Live, Compare and Tradeoffs show, held
to a recomputation that shares nothing with kvviz: two plain transformers forwards (eager
attention) of the same tokens, the full cache as a causal mask and a ``window`` cache as a
sliding-window band mask, their log-probabilities in float64.

The KL is asymmetric, and the test checks that its direction shows on this data: the reversed
KL(policy || full) lies far outside the tolerance, so a swap of the arguments anywhere on the way
(the engine's forced run, the comparison, the sweep's rows) fails here.

One prompt of P = 48 tokens, 8 steps, windows of 6 and 12 entries.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests.references import kl_rows, plain_logprobs64, window_band

from kvviz.compare.run import compare
from kvviz.policies.spec import PolicySpec
from kvviz.runs.bundle import RunSettings
from kvviz.runtime import comparison
from kvviz.sweep import run as sweep

TEXT = (
    "In the spring of that year the river rose higher than anyone in the valley could remember. "
    "The miller moved his sacks of flour to the upper floor, the farmers drove their cattle to the hills, "
    "and the children watched from the bridge as whole trees floated past toward the sea."
)
P, STEPS = 48, 8
B, B2 = 6, 12  # window entries per layer and KV head: most of the prompt is evicted
RTOL, ATOL = 1e-4, 1e-6  # float32 forwards through a cache against one plain forward: seen within 2e-5 relative


@pytest.fixture(scope="module")
def tokens(smollm):
    ids = smollm.tokenizer(TEXT).input_ids
    assert len(ids) >= P + STEPS
    return ids[:P], ids[P : P + STEPS]


def references(model, seq, budgets):
    """float64 log-probs (steps, vocab) of the full cache and of a window of each budget."""
    full = plain_logprobs64(model, seq, P)
    windows = {b: plain_logprobs64(model, seq, P, window_band(len(seq), P, b)) for b in budgets}
    return full, windows


def clear_argmax(logprobs):
    """The reference's top-1 is no near-tie that float32 could flip."""
    top2 = logprobs.topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-3


def check_against(kl, top1, full, policy):
    """kvviz's per-step KL and top-1 against the float64 references, and the direction shows."""
    expected = kl_rows(full, policy).numpy()
    reversed_ = kl_rows(policy, full).numpy()
    clear_argmax(full)
    clear_argmax(policy)
    np.testing.assert_allclose(np.asarray(kl, dtype=np.float64), expected, rtol=RTOL, atol=ATOL)
    # the reversed KL is far from what kvviz reports: a swap would fail the line above
    assert (np.abs(reversed_ - expected) > 10 * (ATOL + RTOL * np.abs(expected))).sum() >= len(expected) // 2
    assert np.abs(reversed_.mean() - expected.mean()) > 10 * (ATOL + RTOL * expected.mean())
    np.testing.assert_array_equal(np.asarray(top1, dtype=bool), (full.argmax(-1) == policy.argmax(-1)).numpy())
    return expected


def test_against_full_reports_kl_full_to_policy_and_top1(smollm, tokens):
    prompt, _ = tokens
    runs = comparison.against_full(
        smollm.model, smollm.tokenizer, prompt, "window", budget=B, max_new_tokens=STEPS, stop_at_eos=False
    )
    seq = prompt + runs.full.generated_ids[:-1]  # what the forced run fed: the full cache's tokens
    full, windows = references(smollm.model, seq, [B])
    assert runs.full.generated_ids == full.argmax(-1).tolist()  # the full cache is plain greedy decoding
    kl = check_against(runs.forced.kl_to_reference, runs.forced.top1_agreement, full, windows[B])
    assert kl[0] == 0  # the prefill's attention reads the whole prompt, as the full cache's does
    assert kl[1:].min() > 1e-3  # then the window changes the predictions: a KL of 0 would hide a swap
    assert not runs.forced.top1_agreement.all()  # and flips some top-1 choices, so top-1 is tested too


def test_compare_reports_kl_full_to_policy_and_top1(smollm, tokens):
    prompt, _ = tokens
    settings = RunSettings(
        model="", prompt_name="Custom", prompt_text=TEXT, chat=False, max_new_tokens=STEPS,
        policies=[PolicySpec.of("window", budget=B), PolicySpec.of("window", budget=B2)],
    )
    result = compare(smollm.model, smollm.tokenizer, prompt, settings)
    assert result.full.n_steps == STEPS and len(result.runs) == 2
    seq = prompt + result.full.generated_ids[:-1]
    full, windows = references(smollm.model, seq, [B, B2])
    for run, budget in zip(result.runs, [B, B2]):
        kl = check_against(run.forced.kl_to_reference, run.forced.top1_agreement, full, windows[budget])
        assert math.isclose(run.mean_kl, kl.mean(), rel_tol=RTOL, abs_tol=ATOL)
    assert result.runs[0].mean_kl > result.runs[1].mean_kl  # the smaller window loses more


def test_sweep_rows_report_mean_kl_full_to_policy_and_top1(smollm, tokens):
    prompt, continuation = tokens
    settings = sweep.SweepSettings(policies=("window",), budgets=(B, B2), text=TEXT, context=P, continuation=STEPS)
    result = sweep.run(smollm.model, smollm.tokenizer, settings)
    seq = prompt + continuation[:-1]  # the continuation, forced one token per step
    full, windows = references(smollm.model, seq, [B, B2])
    rows = {row.budget: row for row in result.rows}
    assert sorted(rows) == [B, B2]
    for budget, policy in windows.items():
        expected, reversed_ = kl_rows(full, policy).mean().item(), kl_rows(policy, full).mean().item()
        assert math.isclose(rows[budget].kl_full, expected, rel_tol=RTOL, abs_tol=ATOL)
        assert abs(reversed_ - expected) > 10 * (ATOL + RTOL * expected)  # the direction shows
        top1 = (full.argmax(-1) == policy.argmax(-1)).double().mean().item()
        assert math.isclose(rows[budget].top1_agree, top1, abs_tol=1e-9)
        # perplexity of the forced continuation under the window, from the same reference
        nll = -policy.gather(1, torch.tensor(continuation)[:, None])[:, 0]
        assert math.isclose(rows[budget].ppl, math.exp(nll.mean().item()), rel_tol=RTOL)
    assert math.isclose(result.reference["ppl"], math.exp(-full.gather(1, torch.tensor(continuation)[:, None]).mean().item()), rel_tol=RTOL)
