"""Storage policies on hand-built tensors: packed sizes, exact dequantized values, composition
with eviction (keep), and the errors of stores that cannot follow eviction."""

import pytest
import torch

from kvviz.policies import PolicyError, build
from kvviz.storage.quantize import unpack


def store_of(spec, params=None, kv_heads=2, head_dim=16, dtype=torch.float32):
    return build(spec, params or {}).storage.make_store(0, 1, kv_heads, head_dim, dtype, torch.device("cpu"))


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------- quant


@pytest.mark.parametrize(
    "bits, group, symmetric, expected",
    [
        # (kv_heads=2, n=3, head_dim=16): codes 96 * bits / 8 bytes; scales (2, 3, 16 / group) float32 (+ zeros)
        (8, 16, False, 96 + 2 * 24),
        (4, 16, False, 48 + 2 * 24),
        (4, 8, False, 48 + 2 * 48),
        (2, 16, False, 24 + 2 * 24),
        (2, 16, True, 24 + 24),
    ],
)
def test_quant_packed_bytes(bits, group, symmetric, expected):
    store = store_of("quant", {"bits": bits, "group_size": group, "symmetric": symmetric})
    store.append(randn(2, 3, 16), randn(2, 3, 16, seed=1))
    assert len(store) == 3
    assert store.nbytes() == 2 * expected  # keys and values
    codes = store.k.q.codes
    assert codes.dtype == torch.uint8 and codes.shape == (2, 3, 16 * bits // 8)


def test_quant_group_size_is_capped_at_head_dim():
    store = store_of("quant", {"bits": 4, "group_size": 128})
    store.append(randn(2, 1, 16), randn(2, 1, 16))
    assert store.k.q.scale.shape == (2, 1, 1)


def test_quant_exact_dequantized_values():
    store = store_of("quant", {"bits": 4, "group_size": 4}, kv_heads=1, head_dim=8)
    keys = torch.tensor([[[0.0, 1.5, 3.0, 7.5, -1.0, -0.5, 0.3, 6.5]]])
    store.append(keys, -keys)
    k, v = store.materialize()
    assert k.tolist() == [[[0.0, 1.5, 3.0, 7.5, -1.0, -0.5, 0.5, 6.5]]]
    assert v.tolist() == [[[0.0, -1.5, -3.0, -7.5, 1.0, 0.5, -0.5, -6.5]]]
    assert unpack(store.k.q.codes, 4).tolist() == [[[0, 3, 6, 15, 0, 1, 3, 15]]]
    err = store.error()
    assert err.key == pytest.approx(0.2 / keys.norm().item(), rel=1e-5)
    assert (err.full_precision_keys, err.full_precision_values) == (0, 0)


def test_quant_bits_must_be_2_4_or_8():
    with pytest.raises(PolicyError, match="bits must be one of 8, 4, 2, not 3"):
        build("quant", {"bits": 3})
    with pytest.raises(PolicyError, match="group_size 12 does not divide"):
        store_of("quant", {"group_size": 12})


def test_quant_per_token_keep_gathers_rows_without_requantizing():
    store = store_of("quant", {"bits": 2})
    store.append(randn(2, 5, 16), randn(2, 5, 16, seed=1))
    before_k, before_v = store.materialize()
    codes = store.k.q.codes.clone()
    keep = torch.tensor([[0, 2, 4], [1, 3, 4]])
    store.keep(keep)
    k, v = store.materialize()
    idx = keep.unsqueeze(-1).expand(-1, -1, 16)
    assert torch.equal(k, before_k.gather(1, idx)) and torch.equal(v, before_v.gather(1, idx))
    assert torch.equal(store.k.q.codes, codes.gather(1, keep.unsqueeze(-1).expand(-1, -1, 4)))
    assert len(store) == 3 and store.nbytes() == 2 * (2 * 3 * 4 + 2 * 2 * 3 * 1 * 4)


def test_quant_per_channel_groups_and_pending_tokens():
    store = store_of("quant", {"bits": 4, "axis": "per_channel", "group_size": 4})
    store.append(randn(2, 6, 16), randn(2, 6, 16, seed=1))
    assert (store.k.n_quantized, store.k.tail.shape[1]) == (4, 2)
    # codes (2, 4, 8) bytes + scale and zero (2, 1 group, 16) float32 + tail (2, 2, 16) float32
    assert store.nbytes() == 2 * (64 + 2 * 128 + 256)
    assert (store.error().full_precision_keys, store.error().full_precision_values) == (2, 2)
    store.append(randn(2, 2, 16, seed=2), randn(2, 2, 16, seed=3))
    assert (store.k.n_quantized, store.k.tail.shape[1]) == (8, 0)


def test_quant_per_channel_keep_reforms_groups():
    store = store_of("quant", {"bits": 8, "axis": "per_channel", "group_size": 2})
    keys = randn(2, 6, 16)
    store.append(keys, keys)
    before, _ = store.materialize()
    keep = torch.tensor([[0, 1, 3], [2, 4, 5]])
    store.keep(keep)
    assert (store.k.n_quantized, store.k.tail.shape[1]) == (2, 1)  # one regrouped pair, one waiting
    k, _ = store.materialize()
    gathered = before.gather(1, keep.unsqueeze(-1).expand(-1, -1, 16))
    assert torch.equal(k[:, 2], gathered[:, 2])  # the waiting token is exact
    assert (k - gathered).abs().max() < 0.05  # 8-bit requantization of the pair


def test_quant_keep_with_merged_replacements():
    store = store_of("quant", {"bits": 8})
    store.append(randn(2, 4, 16), randn(2, 4, 16, seed=1))
    new_k = torch.full((2, 2, 16), 3.0)
    store.keep(torch.tensor([[0, 1], [2, 3]]), new_k, -new_k)
    k, v = store.materialize()
    assert torch.equal(k, new_k) and torch.equal(v, -new_k)


# --------------------------------------------------------------------------------- kivi


def test_kivi_layout_follows_the_paper():
    store = store_of("kivi", {"bits": 2, "residual": 4, "group_size": 16})
    keys, values = randn(2, 12, 16), randn(2, 12, 16, seed=1)
    store.append(keys[:, :10], values[:, :10])  # prefill of 10
    assert (store.k.n_quantized, store.k.tail.shape[1]) == (8, 2)  # keys: 2 groups of R quantized, 10 mod R wait
    assert (store.v.n_quantized, store.v.tail.shape[1]) == (6, 4)  # values: all but the last R quantized
    k, v = store.materialize()
    assert torch.equal(k[:, 8:], keys[:, 8:10]) and torch.equal(v[:, 6:], values[:, 6:10])  # full precision
    # keys: codes (2, 8, 4) + scale, zero (2, 2 groups, 16) f32 + tail (2, 2, 16) f32
    # values: codes (2, 6, 4) + scale, zero (2, 6, 1) f32 + tail (2, 4, 16) f32
    assert store.nbytes() == (64 + 2 * 256 + 256) + (48 + 2 * 48 + 512)
    assert (store.error().full_precision_values, store.error().full_precision_keys) == (4, 2)
    store.append(keys[:, 10:11], values[:, 10:11])
    store.append(keys[:, 11:12], values[:, 11:12])
    assert (store.k.n_quantized, store.k.tail.shape[1]) == (12, 0)  # the key group filled and was quantized
    assert (store.v.n_quantized, store.v.tail.shape[1]) == (8, 4)
    assert torch.equal(store.materialize()[1][:, 8:], values[:, 8:])


def test_kivi_keys_per_channel_values_per_token():
    store = store_of("kivi", {"bits": 2, "residual": 4, "group_size": 16}, kv_heads=1)
    # keys: each channel constant over the tokens of a group (outlier channel 0): exact per channel
    keys = torch.arange(16.0).repeat(4, 1).unsqueeze(0) * torch.tensor([100.0] + [1.0] * 15)
    # values: each token takes 4 levels on a step of 1: exact per token at 2 bits
    values = (torch.arange(4.0)[:, None] * 7 + torch.arange(16.0) % 4).unsqueeze(0)
    store.append(keys, torch.cat([values, torch.zeros(1, 4, 16)], dim=1)[:, :4])
    store.append(torch.zeros(1, 4, 16), torch.zeros(1, 4, 16))  # pushes the 4 values out of the residual
    k, v = store.materialize()
    assert torch.equal(k[:, :4], keys) and torch.equal(v[:, :4], values)
    assert store.error().key == 0 and store.error().value == 0


def test_kivi_bits():
    with pytest.raises(PolicyError, match="bits must be one of 2, 4"):
        build("kivi", {"bits": 8})


def test_kivi_keep_composes_with_eviction():
    store = store_of("kivi", {"bits": 4, "residual": 4})
    keys, values = randn(2, 10, 16), randn(2, 10, 16, seed=1)
    store.append(keys, values)
    before_v = store.v.held()  # what is held (materialize after an append: what the attention reads, unquantized)
    keep = torch.tensor([[0, 1, 2, 5, 8, 9], [3, 4, 6, 7, 8, 9]])
    store.keep(keep)
    assert len(store) == 6
    assert (store.k.n_quantized, store.k.tail.shape[1]) == (4, 2)
    assert (store.v.n_quantized, store.v.tail.shape[1]) == (2, 4)
    _, v = store.materialize()
    gathered = before_v.gather(1, keep.unsqueeze(-1).expand(-1, -1, 16))
    assert torch.allclose(v, gathered, atol=1e-6)  # per-token requantization maps codes to themselves


# --------------------------------------------------------------------------------- lowrank


def test_lowrank_exact_for_low_rank_data_and_bytes():
    store = store_of("lowrank", {"rank": 2}, kv_heads=2, head_dim=8)
    basis = randn(2, 2, 8)  # each head's keys live in a 2-d subspace
    keys = randn(2, 6, 2, seed=1) @ basis
    values = randn(2, 6, 2, seed=2) @ randn(2, 2, 8, seed=3)
    store.append(keys, values)
    k, v = store.materialize()
    assert torch.allclose(k, keys, atol=1e-5) and torch.allclose(v, values, atol=1e-5)
    # coefficients (2, 6, 2) x 2 + bases (2, 8, 2) x 2, float32
    assert store.nbytes() == 4 * (2 * 24 + 2 * 32)
    # a later token is projected on the prompt's basis: its part outside the subspace is lost
    inside = randn(2, 1, 2, seed=4) @ basis
    store.append(inside + 0.0, torch.zeros(2, 1, 8))
    assert torch.allclose(store.materialize()[0][:, -1:], inside, atol=1e-5)
    assert store.error().key < 1e-5
    outside = torch.linalg.svd(basis, full_matrices=True).Vh[:, -1:, :]  # orthogonal to each head's subspace
    store.append(outside, torch.zeros(2, 1, 8))
    assert torch.allclose(store.materialize()[0][:, -1:], torch.zeros(2, 1, 8), atol=1e-5)


def test_lowrank_keep_gathers_coefficients():
    store = store_of("lowrank", {"rank": 3}, kv_heads=2, head_dim=8)
    store.append(randn(2, 5, 8), randn(2, 5, 8, seed=1))
    before_k, _ = store.materialize()
    keep = torch.tensor([[0, 4], [1, 2]])
    store.keep(keep)
    assert len(store) == 2
    assert torch.allclose(store.materialize()[0], before_k.gather(1, keep.unsqueeze(-1).expand(-1, -1, 8)))


@pytest.mark.parametrize("rank", [16, 32])
def test_lowrank_rank_not_below_head_dim(rank):
    with pytest.raises(PolicyError, match=f"rank {rank} is not below the head dimension 16, so it would hold more bytes than the full cache"):
        store_of("lowrank", {"rank": rank})


# --------------------------------------------------------------------------------- head_share


def test_head_share_pools_consecutive_heads():
    store = store_of("head_share", {"groups": 2}, kv_heads=4, head_dim=2)
    keys = torch.tensor([[[1.0, 0.0]], [[3.0, 2.0]], [[0.0, 4.0]], [[2.0, 0.0]]])  # (4, 1, 2)
    store.append(keys, 2 * keys)
    assert store.keys.shape == (2, 1, 2)  # only the pooled heads are held
    k, v = store.materialize()
    assert k.tolist() == [[[2.0, 1.0]], [[2.0, 1.0]], [[1.0, 2.0]], [[1.0, 2.0]]]
    assert torch.equal(v, 2 * k)
    assert store.nbytes() == 2 * 2 * 1 * 2 * 4
    err = store.error()
    assert err.full_precision_keys is None  # pooling quantizes nothing
    # |x - pooled|^2: group 0 (1+1)+(1+1), group 1 (1+4)+(1+4) = 14; |x|^2 = 1+13+16+4 = 34
    assert err.key == pytest.approx((14 / 34) ** 0.5)


def test_head_share_mqa_and_bad_groups():
    store = store_of("head_share", {"groups": 1}, kv_heads=3)
    store.append(randn(3, 4, 16), randn(3, 4, 16))
    assert store.nbytes() == 2 * 4 * 16 * 4
    with pytest.raises(PolicyError, match="groups 2 does not divide the model's 3 KV heads"):
        store_of("head_share", {"groups": 2}, kv_heads=3)


def test_head_share_refuses_per_head_eviction():
    store = store_of("head_share", {"groups": 1})
    store.append(randn(2, 4, 16), randn(2, 4, 16))
    with pytest.raises(PolicyError, match="cannot follow a selector that evicts per KV head"):
        store.keep(torch.tensor([[0, 1], [0, 1]]))
