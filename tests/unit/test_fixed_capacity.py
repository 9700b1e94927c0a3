"""Fixed-capacity layers (``kvviz.storage.fixed_capacity``) against the growing layout, one layer fed the
same random keys, values and queries (SmolLM2's shapes: 9 query heads over 3 KV heads, head dim
64): every step the buffers' valid rows equal the growing store's entries bit for bit, the slots
not written yet are zeros, the mask hides exactly those, and attention through the masked buffer
equals attention over the held entries (a float64 recomputation)."""

import pytest
import torch

from kvviz.runtime import cuda_graphs
from kvviz.runtime.policy_cache import PolicyCache
from kvviz.policies import build

KV, Q, D, PROMPT, STEPS = 3, 9, 64, 40, 5
SPECS = [
    ("full", None, None),
    ("snapkv", {"window": 4}, 16),
    ("snapkv+quant", {"bits": 2}, 16),
    ("kivi", {"residual": 8, "group_size": 32}, None),
    ("kivi", {"residual": 64, "bits": 4}, None),  # the prompt still in the residual
    ("snapkv+kivi", {"residual": 6}, 16),
    ("quant", {"axis": "per_channel", "group_size": 16, "symmetric": True}, None),
    ("quant", {"bits": 4, "group_size": 16}, None),
    ("quant", {"bits": 8, "symmetric": True}, None),
    ("lowrank", {"rank": 8}, None),
    ("head_share", {"groups": 1}, None),
    # selectors that read the model before the prefill, here without it (a bare cache)
    ("criticalkv", {"scorer": "knorm", "adaptive": True}, 16),
    ("duo_attention", {"head_ratio": 1.0}, 16),
    ("kvzip", {"adaptive": True}, 16),
]


def inputs(n, start, generator):
    k = torch.randn(1, KV, n, D, generator=generator)
    v = torch.randn(1, KV, n, D, generator=generator)
    q = torch.randn(Q, n, D, generator=generator)
    return k, v, torch.arange(start, start + n), q


def prefilled(spec, params, budget):
    g = torch.Generator().manual_seed(0)
    cache = PolicyCache(build(spec, params, budget=budget), 1, PROMPT, PROMPT + STEPS, KV, torch.device("cpu"), generator=g)
    cache.layers[0].step(*inputs(PROMPT, 0, torch.Generator().manual_seed(1)))
    return cache


def masked_attention(q, keys, values, mask):
    """float64: q (Q, 1, D) over keys/values (KV, n, D) with an additive mask (..., n)."""
    k = keys.double().repeat_interleave(Q // KV, dim=0)
    v = values.double().repeat_interleave(Q // KV, dim=0)
    scores = q.double() @ k.transpose(1, 2) / D**0.5 + mask.double().reshape(1, 1, -1)
    return scores.softmax(-1) @ v  # (Q, 1, D)


@pytest.mark.parametrize(("spec", "params", "budget"), SPECS, ids=lambda v: str(v))
def test_fixed_layer_holds_what_the_growing_layer_holds(spec, params, budget):
    growing, fixed = prefilled(spec, params, budget), prefilled(spec, params, budget)
    tail = "kivi" in spec or "per_channel" in str(params)  # a full-precision tail in a ring
    fixed.hold_fixed(STEPS)
    grow, fix = growing.layers[0], fixed.layers[0]
    held = len(grow)
    capacity = held + STEPS
    assert fix.fixed.capacity == capacity and len(fix) == held
    g = torch.Generator().manual_seed(2)
    for s in range(STEPS):
        k, v, pos, q = inputs(1, PROMPT + s, g)
        mask = fix.fixed.attention_mask(torch.float32)  # (1, 1, 1, capacity), for this step
        keys_g, values_g = grow.step(k, v, pos)
        keys_f, values_f = fix.step(k, v, pos)
        n = held + s + 1
        assert keys_f.shape == (1, KV, capacity, D) and len(fix) == len(grow) == n
        torch.testing.assert_close(keys_f[:, :, :n], keys_g, rtol=0, atol=0)
        torch.testing.assert_close(values_f[:, :, :n], values_g, rtol=0, atol=0)
        assert keys_f.isfinite().all() and values_f.isfinite().all()  # what the mask hides is never NaN
        if not tail:  # zeros (a tail's ring shows through the slots of a stream not written yet)
            assert not keys_f[:, :, n:].any() and not values_f[:, :, n:].any()
        assert (mask[0, 0, 0, :n] == 0).all() and (mask[0, 0, 0, n:] == torch.finfo(torch.float32).min).all()
        torch.testing.assert_close(fix.positions[:, :n], grow.positions, rtol=0, atol=0)
        out_f = masked_attention(q, keys_f[0], values_f[0], mask)
        out_g = masked_attention(q, keys_g[0], values_g[0], torch.zeros(n))
        torch.testing.assert_close(out_f, out_g, rtol=1e-12, atol=1e-12)
        assert fixed.kv_bytes() == growing.kv_bytes() and fixed.bookkeeping_bytes() == growing.bookkeeping_bytes()
    assert fix.store.error() == grow.store.error()
    # every slot written; a ring for a full-precision tail and groups rounded up take more
    assert fixed.reserved_kv_bytes() > fixed.kv_bytes() if tail else fixed.reserved_kv_bytes() == fixed.kv_bytes()


def test_a_fixed_layer_refuses_more_tokens_than_its_capacity():
    cache = prefilled("full", None, None)
    cache.hold_fixed(1)
    g = torch.Generator().manual_seed(2)
    cache.layers[0].step(*inputs(1, PROMPT, g)[:3])
    with pytest.raises(ValueError, match="fixed capacity"):
        cache.layers[0].step(*inputs(1, PROMPT + 1, g)[:3])


@pytest.mark.parametrize(
    "spec", ["full", "snapkv+quant", "lowrank", "kivi", "h2o+quant", "h2o+kivi", "tova+lowrank", "merge+quant", "streaming_llm+quant"]
)
def test_a_decode_step_keeps_every_state_tensor_and_its_shape(spec):
    """What a CUDA graph's capture requires (``cuda_graphs.layer_state``, copied back after each
    replay): the same tensors by path, each with the same shape, before and after a step. A
    fixed-capacity layer writes its buffers in place: the very same tensors."""
    params = {"quant.axis": "per_channel", "quant.group_size": 4} if spec == "streaming_llm+quant" else None
    budget = None if spec in ("full", "lowrank", "kivi") else 16
    cache = prefilled(spec, params, budget)
    if cache.grows():
        cache.hold_fixed(STEPS)
    layer, g = cache.layers[0], torch.Generator().manual_seed(2)
    layer.step(*inputs(1, PROMPT, g))  # the engine's warm-up step
    assert cache.steady()
    before = cuda_graphs.layer_state(layer)
    assert any(p[0] == "store" for p in before)
    layer.step(*inputs(1, PROMPT + 1, g))
    after = cuda_graphs.layer_state(layer)
    assert {p: t.shape for p, t in after.items()} == {p: t.shape for p, t in before.items()}
    if cache.is_fixed:
        assert all(after[p] is t for p, t in before.items() if t.numel())


class Tok:
    eos_token_id = None

    def decode(self, ids):
        return " ".join(map(str, ids))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("spec", ["full", "snapkv+quant"])
def test_both_attentions_read_the_mask_on_a_tiny_llama(tiny_llama, attention, spec):
    """The pre-hook's mask replaces the model's in sdpa and eager attention alike: the same tokens
    and (nearly) the same log-probabilities as the growing cache."""
    from kvviz.runtime import engine

    tiny_llama.config._attn_implementation = attention
    try:
        prompt = [(7 * i + 3) % 120 + 1 for i in range(30)]
        kw = dict(budget=12 if spec != "full" else None, max_new_tokens=6, stop_at_eos=False, keep_logprobs=True)
        growing = engine.run(tiny_llama, Tok(), prompt, spec, fixed_capacity=False, **kw)
        fixed = engine.run(tiny_llama, Tok(), prompt, spec, fixed_capacity=True, **kw)
    finally:
        tiny_llama.config._attn_implementation = "sdpa"
    assert fixed.extra["fixed_capacity"] and fixed.generated_ids == growing.generated_ids
    torch.testing.assert_close(fixed.extra["logprobs"].exp(), growing.extra["logprobs"].exp(), rtol=0, atol=1e-3 if "quant" in spec else 1e-6)
