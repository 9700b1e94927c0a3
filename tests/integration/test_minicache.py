"""minicache held to MiniCache's merge rule (Liu et al. 2024, Eq. 2-3 and the token retention),
re-implemented here in float64: the restored keys and values of a layer pair, which tokens are
retained, the bytes held (by hand), and, on the embedded SmolLM2, that the model decodes from the
merged cache: its log-probabilities equal transformers' own decode from a DynamicCache whose
prompt entries are the float64 reference's restored ones.
"""

from __future__ import annotations

import math

import pytest
import torch

from kvviz.policies import PolicyError, build
from kvviz.record.text import encode_prompt
from kvviz.runtime import engine
from kvviz.runtime.policy_cache import PolicyCache

T, GAMMA = 0.6, 0.05  # the paper's defaults


def reference_merge(a: torch.Tensor, b: torch.Tensor, t: float = T, gamma: float = GAMMA):
    """a, b (kv_heads, n, d) of layers l and l+1 -> (a restored, b restored, retained (kv_heads, n) bool), float64.
    The angle from the chord (2 asin(|u_a - u_b| / 2)), not arccos of the dot product as kvviz."""
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na, b / nb
    omega = 2 * torch.asin(((ua - ub).norm(dim=-1) / 2).clamp(max=1))
    e = (torch.sin((1 - t) * omega) / torch.sin(omega))[..., None] * ua + (torch.sin(t * omega) / torch.sin(omega))[..., None] * ub
    dist = omega / math.pi
    lo, hi = dist.min(dim=-1, keepdim=True).values, dist.max(dim=-1, keepdim=True).values
    cut = hi - gamma * (hi - lo)
    retained = dist > cut
    margin = (dist - cut).abs().min()
    assert margin > 1e-6, "a token sits on the retention cut"
    ra, rb = torch.where(retained[..., None], a, e * na), torch.where(retained[..., None], b, e * nb)
    return ra, rb, retained


def pair_bytes(kv_heads, n, d, retained_k, retained_v, elem=4):
    """Bytes of a merged pair's prompt, keys and values: a direction per token and head, two norms,
    and per retained token an int32 index and both layers' originals."""
    return sum(kv_heads * n * d * elem + 2 * kv_heads * n * elem + r * (4 + 2 * d * elem) for r in (retained_k, retained_v))


def test_a_pair_restores_the_papers_merge_and_holds_its_bytes():
    L, KV, D, N, STEPS = 4, 2, 16, 40, 2  # layers 2 and 3 merge (the deep half)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(KV, N, D, generator=g, dtype=torch.float64)

    def layer_kv(n):  # adjacent layers alike, as the paper observes, plus a few very different tokens
        k = base[:, :n] + 0.3 * torch.randn(KV, n, D, generator=g, dtype=torch.float64)
        return k.float(), torch.randn(KV, n, D, generator=g).float()

    cache = PolicyCache(build("minicache"), L, N, N + STEPS, KV, torch.device("cpu"))
    prompt = [layer_kv(N) for _ in range(L)]
    for li, (k, v) in enumerate(prompt):
        cache.layers[li].step(k[None], v[None], torch.arange(N))
    ka, kb, ret_k = reference_merge(prompt[2][0], prompt[3][0])
    va, vb, ret_v = reference_merge(prompt[2][1], prompt[3][1])
    assert 0 < ret_k.sum() < KV * N and 0 < ret_v.sum() < KV * N
    for li, (k_ref, v_ref) in ((2, (ka, va)), (3, (kb, vb))):
        k, v = cache.layers[li].store.materialize()
        torch.testing.assert_close(k.double(), k_ref, atol=2e-5, rtol=0)
        torch.testing.assert_close(v.double(), v_ref, atol=2e-5, rtol=0)
        assert cache.layers[li].store.retained() == (int(ret_k.sum()), int(ret_v.sum()))
    for li in (0, 1):  # the shallow half stays whole
        k, v = cache.layers[li].store.materialize()
        assert torch.equal(k, prompt[li][0]) and torch.equal(v, prompt[li][1])
    whole = 2 * KV * D * 4  # one token of one layer, keys and values, float32
    expected = 2 * N * whole + pair_bytes(KV, N, D, int(ret_k.sum()), int(ret_v.sum()))
    assert cache.kv_bytes() == expected
    # generated tokens are appended whole, after the merged prompt
    new = [layer_kv(1) for _ in range(L)]
    for li, (k, v) in enumerate(new):
        keys, _ = cache.layers[li].step(k[None], v[None], torch.tensor([N]))
        assert torch.equal(keys[0, :, -1], k[:, 0])
    assert cache.kv_bytes() == expected + L * whole
    error = cache.store_error()
    assert error.key[:2] == [0.0, 0.0]
    assert error.key[2] == pytest.approx(float((ka - prompt[2][0].double()).norm() / prompt[2][0].double().norm()), rel=1e-4)


def test_minicache_refuses_per_layer_eviction():
    cache = PolicyCache(build("snapkv+minicache", budget=4, params={"start": 0.0}), 2, 8, 9, 1, torch.device("cpu"))
    q = torch.randn(3, 8, 8)
    with pytest.raises(PolicyError, match="minicache"):  # layers 0 and 1 are a pair
        cache.layers[0].step(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8), torch.arange(8), q)


def test_smollm_decodes_from_the_merged_cache(smollm):
    """kvviz's run against transformers' decode from a DynamicCache holding the reference's merge."""
    from transformers import DynamicCache

    model, steps = smollm.model, 4
    ids = encode_prompt(smollm.tokenizer, "The lighthouse keeper climbed the stairs every evening to light the lamp. " * 2)
    P = len(ids)
    trace = engine.run(model, smollm.tokenizer, ids, "minicache", max_new_tokens=steps, stop_at_eos=False, keep_logprobs=True)
    full = engine.run(model, smollm.tokenizer, ids, "full", max_new_tokens=steps, stop_at_eos=False, keep_logprobs=True)
    # held at a fixed capacity after the prefill (what CUDA-graph decoding replays): the same run
    fixed = engine.run(model, smollm.tokenizer, ids, "minicache", max_new_tokens=steps, stop_at_eos=False, keep_logprobs=True, fixed_capacity=True)
    assert fixed.extra["fixed_capacity"] and fixed.kv_bytes == trace.kv_bytes
    torch.testing.assert_close(fixed.extra["logprobs"], trace.extra["logprobs"], atol=1e-4, rtol=0)  # masked slots: sdpa sums in another order
    kw = engine.cache_keyword(model)
    n_layers = model.config.num_hidden_layers
    with torch.inference_mode():
        dc = DynamicCache(config=model.config)
        out = model(input_ids=torch.tensor([ids]), use_cache=True, **{kw: dc})
        logprobs = [out.logits[0, -1].float().log_softmax(-1)]
        retained = []
        for a in range(math.ceil(n_layers / 2), n_layers - 1, 2):
            la, lb = dc.layers[a], dc.layers[a + 1]
            for name in ("keys", "values"):
                ra, rb, ret = reference_merge(getattr(la, name)[0], getattr(lb, name)[0])
                setattr(la, name, ra.float()[None])
                setattr(lb, name, rb.float()[None])
                retained.append(int(ret.sum()))
        for s, token in enumerate(trace.generated_ids[:-1]):
            out = model(input_ids=torch.tensor([[token]]), position_ids=torch.tensor([[P + s]]), use_cache=True, **{kw: dc})
            logprobs.append(out.logits[0, -1].float().log_softmax(-1))
    reference = torch.stack(logprobs)
    torch.testing.assert_close(trace.extra["logprobs"], reference, atol=2e-4, rtol=0)
    assert (trace.extra["logprobs"][1:] - full.extra["logprobs"][1:]).abs().max() > 1e-2  # the merge is felt
    # bytes by hand: 16 whole layers (0-14 and 29), 7 merged pairs, generated tokens whole
    KV, D = smollm.summary.n_kv_heads, smollm.summary.head_dim
    whole = 2 * KV * D * 4
    pairs = sum(pair_bytes(KV, P, D, rk, rv) for rk, rv in zip(retained[::2], retained[1::2]))
    assert len(retained) == 14
    assert trace.kv_bytes == [16 * (P + s) * whole + pairs + 14 * s * whole for s in range(steps)]
