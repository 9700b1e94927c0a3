"""Retrievers held at a fixed capacity (the layout their CUDA graph replays) decode like the growing
layout on the embedded SmolLM2 (CPU, float32, eager steps): the same tokens, the same read sets
at every step, layer and KV head, the same bytes (held, read, summaries), nearly the same
log-probs, lost mass and top-k recall. And SparQ computes its approximate scores once per step and
layer, for ranking and mixing both, with the outputs of computing them twice."""

import numpy as np
import pytest
import torch

from kvviz.policies import sparq
from kvviz.record.text import encode_prompt
from kvviz.runtime import engine

STEPS = 3


@pytest.fixture(scope="module")
def ids(smollm):
    return encode_prompt(smollm.tokenizer, "Name three lighthouses.", chat=True)


def run(smollm, ids, spec, params, budget=None, fixed=False, steps=STEPS):
    return engine.run(smollm.model, smollm.tokenizer, ids, spec, params=params, budget=budget, max_new_tokens=steps,
                      stop_at_eos=False, fixed_capacity=fixed, keep_logprobs=True, capture_queries=True)


@pytest.mark.parametrize(("spec", "params", "budget"), [
    ("quest", {"read_budget": 8, "page_size": 4}, None),
    ("sparq", {"read_budget": 8}, None),
    ("sparq", {"read_budget": 8, "mean_value": False}, None),
    ("simhash", {"read_budget": 37}, None),  # step 1 reads all 37 entries held, step 2 37 of 38
    ("snapkv+quest", {"read_budget": 8, "page_size": 4}, 16),
], ids=lambda v: str(v))
def test_fixed_capacity_retrieval_decodes_like_the_growing_cache(smollm, ids, spec, params, budget):
    growing = run(smollm, ids, spec, params, budget)
    fixed = run(smollm, ids, spec, params, budget, fixed=True)
    assert (growing.extra["fixed_capacity"], fixed.extra["fixed_capacity"]) == (False, True)
    assert fixed.generated_ids == growing.generated_ids
    np.testing.assert_array_equal(fixed.read_mask, growing.read_mask)
    held = fixed.n_layers * 3 * (len(ids) + STEPS - 1)  # entries held at the last step (3 KV heads)
    assert 0 < fixed.read_mask[-1].sum() < held  # the last step read some, not all
    np.testing.assert_array_equal(fixed.evicted_at_step, growing.evicted_at_step)
    assert (fixed.kv_bytes, fixed.read_bytes, fixed.summary_bytes) == (growing.kv_bytes, growing.read_bytes, growing.summary_bytes)
    assert fixed.bookkeeping_bytes == growing.bookkeeping_bytes
    # the attention reads a masked, gathered buffer (another sdpa shape): float rounding only
    torch.testing.assert_close(fixed.extra["logprobs"].exp(), growing.extra["logprobs"].exp(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(fixed.lost_mass, growing.lost_mass, atol=1e-5)
    np.testing.assert_allclose(fixed.recall, growing.recall, atol=1e-6)  # NaN at the prefill in both


def test_sparq_scores_once_per_step_with_the_same_outputs(smollm, ids, monkeypatch):
    params = {"read_budget": 8}
    calls = []
    real = sparq.approximate_scores
    monkeypatch.setattr(sparq, "approximate_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    once = run(smollm, ids, "sparq", params, steps=3)
    assert len(calls) == 2 * smollm.model.config.num_hidden_layers  # steps 1 and 2 choose, in every layer

    monkeypatch.setattr(sparq.SparQ, "scores", _fresh(sparq.SparQ.scores))
    calls.clear()
    again = run(smollm, ids, "sparq", params, steps=3)
    assert len(calls) == 2 * 2 * smollm.model.config.num_hidden_layers  # rank and mix each
    assert again.generated_ids == once.generated_ids
    assert torch.equal(again.extra["logprobs"], once.extra["logprobs"])
    np.testing.assert_array_equal(again.read_mask, once.read_mask)


def _fresh(scores):
    """SparQ.scores computed at every call (rank and mix), as before they were kept for the step."""
    def fresh(self, layer):
        layer.scratch.clear()
        return scores(self, layer)
    return fresh
