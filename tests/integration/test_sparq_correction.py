"""SparQ's mean-value correction (Ribar et al. 2024, Algorithm 1) on the embedded SmolLM2, held to a
float64 recomputation from transformers' own projections: in layer 0 at the first decode step
(whose query does not depend on what was read), each query head's attention output is
alpha * softmax(q . K_read / sqrt(d)) V_read + (1 - alpha) * mean(V), alpha being the head's
approximate scores summed over the read entries and mean(V) the mean of all the KV head's values.
With mean_value=False the output is the read attention alone. One 30-token prompt, 1 step each."""

from __future__ import annotations

import pytest
import torch
from tests.references import projections

from kvviz.policies import build
from kvviz.record.text import encode_prompt
from kvviz.runtime import engine
from kvviz.runtime.policy_cache import PolicyCache

TEXT = (
    "The lighthouse keeper climbed the stairs every evening to light the lamp. "
    "One night he found a bottle on the rocks, and inside it was a letter."
)
LAYERS, KV, D, GROUP = 30, 3, 64, 3


@pytest.fixture(scope="module")
def seq(smollm):
    ids = encode_prompt(smollm.tokenizer, TEXT)
    full = engine.run(smollm.model, smollm.tokenizer, ids, "full", max_new_tokens=1, stop_at_eos=False)
    return ids, full.generated_ids[0]


@pytest.fixture(scope="module")
def qkv(smollm, seq):
    """Layer 0's query of the new token (9, d), keys and values (3, n, d), float64, from transformers."""
    ids, token = seq
    full_seq = ids + [token]
    qs, ks = projections(smollm.model, full_seq)
    attn = smollm.model.model.layers[0].self_attn
    with torch.inference_mode():
        h = smollm.model.model.layers[0].input_layernorm(smollm.model.model.embed_tokens(torch.tensor([full_seq])))
        v = attn.v_proj(h)[0].view(len(full_seq), KV, D).transpose(0, 1).double()
    return qs[0][:, -1], ks[0], v


def layer0_output(smollm, ids, token, params):
    """(cache, (heads, d) float64): what layer 0's o_proj receives at the first decode step."""
    P = len(ids)
    cache = PolicyCache(build("sparq", params), LAYERS, P, P + 2, KV, "cpu")
    seen = []
    o_proj = smollm.model.model.layers[0].self_attn.o_proj
    with torch.inference_mode(), cache.attached(smollm.model):
        handle = o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))  # after the cache's own
        try:
            engine.prefill(smollm.model, cache, ids)
            engine.decode_step(smollm.model, cache, torch.tensor([[token]]), torch.tensor([P]))
        finally:
            handle.remove()
    return cache, seen[-1][0, -1].double().reshape(-1, D)


def reference(qkv, read, r, mean_value):
    """(heads, d) float64: Algorithm 1 in layer 0."""
    q, k, v = qkv
    out = []
    for head in range(KV * GROUP):
        qh, kh, vh, idx = q[head], k[head // GROUP], v[head // GROUP], torch.tensor(read[head // GROUP])
        y = (kh[idx] @ qh / D**0.5).softmax(0) @ vh[idx]
        if mean_value:
            i = qh.abs().argsort(descending=True)[:r]
            tau = (D * qh[i].abs().sum() / qh.abs().sum()).sqrt()
            alpha = (kh[:, i] @ qh[i] / tau).softmax(0)[idx].sum()
            y = alpha * y + (1 - alpha) * vh.mean(0)
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("mean_value", [True, False])
def test_layer0_output_is_algorithm_1(smollm, seq, qkv, mean_value):
    ids, token = seq
    r, budget = 8, 10
    cache, got = layer0_output(smollm, ids, token, {"read_budget": budget, "r": r, "mean_value": mean_value})
    read_at = cache.records[0].read_at[0]
    read = [torch.nonzero(row == 1).flatten().tolist() for row in read_at]
    assert all(len(x) == budget for x in read)
    want = reference(qkv, read, r, mean_value)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    other = reference(qkv, read, r, not mean_value)
    assert (got - other).abs().max() > 1e-3  # the correction is not a rounding error here
