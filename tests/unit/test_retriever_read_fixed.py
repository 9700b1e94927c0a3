"""Retrievers over a fixed-capacity layer (``Retriever.read_fixed``, the layout a CUDA graph replays)
against the growing layout, one layer fed the same random keys, values and queries (SmolLM2's
shapes: 9 query heads over 3 KV heads, head dim 64): every step reads the same entries, the read
mask hides exactly the columns not read, attention through it equals attention over the growing
layout's read set (a float64 recomputation, SparQ's mean-value mix included), and a step keeps
every state tensor, the read mask too (what a graph's replay needs)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvviz.policies import build
from kvviz.model.random_model import IdTokenizer
from kvviz.policies.selector import first_true
from kvviz.runtime import cuda_graphs
from kvviz.runtime.policy_cache import PolicyCache
from tests.unit.test_fixed_capacity import inputs  # random (keys, values, positions, queries) of these shapes

KV, Q, D, PROMPT, STEPS = 3, 9, 64, 20, 8  # KV, Q and D as test_fixed_capacity's, which inputs() uses
SPECS = [  # read budgets below, at and above the entries held as the steps go (20 .. 28)
    ("quest", {"read_budget": 8, "page_size": 4, "full_layers": 0}, None),
    ("quest", {"read_budget": 24, "page_size": 5, "full_layers": 0}, None),
    ("quest", {"read_budget": 50, "page_size": 16, "full_layers": 0}, None),
    ("quest", {"read_budget": 8}, None),  # layer 0 of 1 is a full layer: reads everything
    ("sparq", {"read_budget": 8, "r": 8}, None),
    ("sparq", {"read_budget": 24, "r": 8}, None),
    ("sparq", {"read_budget": 8, "mean_value": False}, None),
    ("simhash", {"read_budget": 23, "bits": 2, "tables": 2}, None),  # few bits: many ties (the older entry is read)
    ("snapkv+quest", {"read_budget": 8, "page_size": 4, "full_layers": 0}, 12),
]


def prefilled(spec, params, budget):
    cache = PolicyCache(build(spec, params, budget=budget), 1, PROMPT, PROMPT + STEPS, KV, torch.device("cpu"))
    cache.layers[0].step(*inputs(PROMPT, 0, torch.Generator().manual_seed(1)))
    return cache


def attention(q, keys, values, mask, mix):
    """float64: q (Q, 1, D) over keys/values (KV, k, D) with an additive mask (k,), then SparQ's mix."""
    k = keys.double().repeat_interleave(Q // KV, dim=0)
    v = values.double().repeat_interleave(Q // KV, dim=0)
    out = ((q.double() @ k.transpose(1, 2) / D**0.5 + mask.double()).softmax(-1) @ v)[:, 0]  # (Q, D)
    if mix is not None:
        alpha, mean = mix[0].double()[:, None], mix[1].double().repeat_interleave(Q // KV, dim=0)
        out = alpha * out + (1 - alpha) * mean
    return out


@pytest.mark.parametrize(("spec", "params", "budget"), SPECS, ids=lambda v: str(v))
def test_fixed_capacity_reads_what_the_growing_layout_reads(spec, params, budget):
    growing, fixed = prefilled(spec, params, budget), prefilled(spec, params, budget)
    assert fixed.grows() and cuda_graphs.usable(fixed, torch.device("cuda"), sample=False)
    fixed.hold_fixed(STEPS)
    g = torch.Generator().manual_seed(2)
    for s in range(STEPS):
        k, v, pos, q = inputs(1, PROMPT + s, g)
        k_g, v_g = growing.layers[0].step(k, v, pos, q)
        mix_g = growing.layers[0].mix
        k_f, v_f = fixed.layers[0].step(k, v, pos, q)
        mix_f = fixed.layers[0].mix
        read_g, read_f = growing.records[0].read_at[0], fixed.records[0].read_at[0]
        assert torch.equal(read_f, read_g)  # the same entries read at this step (and before)
        n = len(growing.layers[0])
        count = growing.reader.read_count(0, n)
        assert (read_g == s + 1).sum(-1).tolist() == [count] * KV
        mask = fixed.layers[0].fixed.reads[0, 0, 0]  # (width,)
        width = growing.reader.read_width(0, PROMPT + STEPS if budget is None else budget + STEPS)
        assert mask.shape == (width,) and (mask == 0).sum() == count and (mask[count:] < -1e30).all()
        assert (mix_g is None) == (mix_f is None) or "sparq" in spec  # a fixed layer always mixes
        if mix_f is not None and mix_g is None:  # everything read: alpha 1, no change
            assert (mix_f[0] == 1).all()
        want = attention(q[:, -1:], k_g[0], v_g[0], torch.zeros(k_g.shape[2]), mix_g)
        got = attention(q[:, -1:], k_f[0], v_f[0], mask, mix_f)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["quest", "sparq", "simhash", "snapkv+quest"])
def test_a_retriever_step_keeps_every_state_tensor_and_the_read_mask(spec):
    """What a CUDA graph's capture requires: the same tensors (the very same: written in place),
    the read mask the attention reads among them, before and after a step."""
    cache = prefilled(spec, {"read_budget": 8}, 12 if "snapkv" in spec else None)
    cache.hold_fixed(STEPS)
    layer, g = cache.layers[0], torch.Generator().manual_seed(2)
    layer.step(*inputs(1, PROMPT, g))  # the engine's warm-up step
    before, mask = cuda_graphs.layer_state(layer), layer.fixed.reads
    layer.step(*inputs(1, PROMPT + 1, g))
    after = cuda_graphs.layer_state(layer)
    assert all(after[p] is t for p, t in before.items() if t.numel()) and after.keys() == before.keys()
    assert layer.fixed.reads is mask


def test_first_true_by_hand():
    mask = torch.tensor([[False, True, False, True, True], [True, False, False, False, False]])
    assert first_true(mask, 4).tolist() == [[1, 3, 4, 0], [0, 1, 2, 3]]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("spec", ["quest", "sparq"])
def test_both_attentions_read_the_read_mask_on_a_tiny_llama(tiny_llama, attention, spec):
    """The pre-hook hands the attention the read mask each step rewrites, in sdpa and eager
    attention alike: the same tokens, read sets and (nearly) the same log-probabilities as the
    growing cache."""
    from kvviz.runtime import engine

    tiny_llama.config._attn_implementation = attention
    try:
        prompt = [(7 * i + 3) % 120 + 1 for i in range(30)]
        params = {"read_budget": 8, "page_size": 4, "full_layers": 1} if spec == "quest" else {"read_budget": 8}
        kw = dict(params=params, max_new_tokens=6, stop_at_eos=False, keep_logprobs=True)
        growing = engine.run(tiny_llama, IdTokenizer(), prompt, spec, fixed_capacity=False, **kw)
        fixed = engine.run(tiny_llama, IdTokenizer(), prompt, spec, fixed_capacity=True, **kw)
    finally:
        tiny_llama.config._attn_implementation = "sdpa"
    assert fixed.extra["fixed_capacity"] and fixed.generated_ids == growing.generated_ids
    # the last step, 35 entries held: 8 read by sparq; two pages of 4 and the newest (3) by quest
    assert (fixed.read_mask == growing.read_mask).all() and fixed.read_mask[-1, -1].sum() == 2 * (8 if spec == "sparq" else 11)
    torch.testing.assert_close(fixed.extra["logprobs"].exp(), growing.extra["logprobs"].exp(), rtol=0, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(1, 4), st.integers(0, 2**31 - 1), st.floats(0, 1), st.data())
def test_first_true_is_a_stable_sort_of_the_mask(n, rows, seed, share, data):
    """The prefix-sum compaction gives what a stable argsort of ``~mask`` gives, for any mask and k."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, n, generator=g) < share
    k = data.draw(st.integers(1, n))
    assert torch.equal(first_true(mask, k), (~mask).to(torch.uint8).argsort(dim=-1, stable=True)[:, :k])
