"""turboquant held to TurboQuant (Zandieh et al. 2025): the codebook and the distortion the paper
states, the codes and decoded vectors against the quantizer re-implemented here in float64, the
packed bytes by hand, and on the embedded SmolLM2 the error of the prompt's own keys and values
(from transformers' cache) as the float64 reference measures it.
"""

from __future__ import annotations

import math

import pytest
import torch

from kvviz.policies import build
from kvviz.policies.turboquant import codebook, rotation
from kvviz.record.text import encode_prompt
from kvviz.runtime import engine
from kvviz.runtime.policy_cache import PolicyCache
from kvviz.storage.quantize import unpack

# Lloyd-Max centroids of the standard normal (Max 1960), the large-dimension limit of a sphere
# coordinate times sqrt(d); and TurboQuant's MSE distortion of unit vectors (paper, Sec. 1.1/Thm 1)
GAUSS = {1: [0.7979], 2: [0.4528, 1.5104]}
D_MSE = {1: 0.36, 2: 0.117, 4: 0.009}


def reference(x: torch.Tensor, rot: torch.Tensor, centroids: torch.Tensor):
    """x (..., d) -> (codes, decoded), float64: nearest centroid of each rotated unit coordinate."""
    x = x.double()
    norm = x.norm(dim=-1, keepdim=True)
    y = (x / norm) @ rot.double().T
    dist = (y[..., None] - centroids.double()).abs()
    codes = dist.argmin(-1)
    two = dist.topk(2, dim=-1, largest=False).values
    return codes, (centroids.double()[codes] @ rot.double()) * norm, (two[..., 1] - two[..., 0])


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_codebook_and_distortion_are_the_papers(bits):
    d = 64
    c = torch.tensor(codebook(d, bits), dtype=torch.float64)
    assert torch.allclose(c, -c.flip(0), atol=1e-5)  # symmetric (the grid point at 0 falls in one cell)
    if bits in GAUSS:
        assert c[-len(GAUSS[bits]):] * math.sqrt(d) == pytest.approx(GAUSS[bits], rel=0.015)
    rot = rotation(d, 0, "cpu").double()
    assert torch.allclose(rot @ rot.T, torch.eye(d, dtype=torch.float64), atol=1e-6)
    x = torch.randn(4000, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x /= x.norm(dim=-1, keepdim=True)
    _, decoded, _ = reference(x, rot, c)
    assert ((x - decoded) ** 2).sum(-1).mean() == pytest.approx(D_MSE[bits], rel=0.05)


@pytest.mark.parametrize("bits", [2, 4])
def test_store_codes_decoded_vectors_and_bytes(bits):
    L, KV, D, N = 3, 2, 64, 24
    g = torch.Generator().manual_seed(0)
    cache = PolicyCache(build("turboquant", params={"bits": bits}), L, N, N + 1, KV, torch.device("cpu"))
    prompt = [(3 * torch.randn(KV, N, D, generator=g), torch.randn(KV, N, D, generator=g)) for _ in range(L)]
    for li, (k, v) in enumerate(prompt):
        cache.layers[li].step(k[None], v[None], torch.arange(N))
    for li, (k, v) in enumerate(prompt):
        store = cache.layers[li].store
        for x, codes, got in ((k, store.k_codes, store.materialize()[0]), (v, store.v_codes, store.materialize()[1])):
            ref_codes, decoded, gap = reference(x, store.rotation, store.centroids)
            clear = gap > 1e-5  # float32 may flip a coordinate sitting on a midpoint
            assert clear.float().mean() > 0.99
            assert torch.equal(unpack(codes, bits).long()[clear], ref_codes[clear])
            assert (got.double() - decoded).abs()[clear.all(-1)].max() < 1e-4
    # by hand: per entry and KV head, d * bits / 8 bytes of codes and a float32 norm, keys and
    # values; the rotation (d x d float32) once, in layer 0
    assert cache.kv_bytes() == L * N * KV * 2 * (D * bits // 8 + 4) + D * D * 4


def test_smollm_prompt_error_equals_the_reference(smollm):
    from transformers import DynamicCache

    model = smollm.model
    ids = encode_prompt(smollm.tokenizer, "The lighthouse keeper climbed the stairs every evening to light the lamp.")
    trace = engine.run(model, smollm.tokenizer, ids, "turboquant", max_new_tokens=1, stop_at_eos=False)
    with torch.inference_mode():
        dc = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids]), use_cache=True, **{engine.cache_keyword(model): dc})
    d = smollm.summary.head_dim
    rot, c = rotation(d, 0, "cpu"), torch.tensor(codebook(d, 4))
    for layer in (0, 17, 29):
        for name, got in (("keys", trace.store_error.key[layer]), ("values", trace.store_error.value[layer])):
            x = getattr(dc.layers[layer], name)[0].double()
            _, decoded, _ = reference(x, rot, c)
            assert got == pytest.approx(float((x - decoded).norm() / x.norm()), rel=1e-3)
    P, KV = len(ids), smollm.summary.n_kv_heads
    assert trace.kv_bytes == [30 * P * KV * 2 * (d * 4 // 8 + 4) + d * d * 4]
