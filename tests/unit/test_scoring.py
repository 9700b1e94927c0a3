"""Attention scores from queries and keys, against a direct computation."""

import math

import torch

from kvviz.policies.scoring import accumulated_attention, attention_probs, keep_top, recent_mask


def direct_probs(q, k, qpos, kpos):
    """Per query head, softmax(q·k/√d) over keys not in the future; then mean over each KV group."""
    kv_heads, group = k.shape[0], q.shape[0] // k.shape[0]
    out = torch.zeros(kv_heads, q.shape[1], k.shape[1], dtype=torch.float64)
    for h in range(q.shape[0]):
        kvh = h // group
        logits = (q[h].double() @ k[kvh].double().T) / math.sqrt(q.shape[-1])
        logits[kpos[kvh][None, :] > qpos[:, None]] = float("-inf")
        out[kvh] += logits.softmax(-1) / group
    return out


def test_attention_probs_average_each_groups_query_heads():
    torch.manual_seed(1)
    q, k = torch.randn(6, 5, 8), torch.randn(2, 7, 8)
    qpos, kpos = torch.arange(2, 7), torch.tensor([[0, 1, 2, 3, 4, 5, 6], [0, 2, 3, 4, 5, 6, 7]])
    got = attention_probs(q, k, qpos, kpos)
    torch.testing.assert_close(got.double(), direct_probs(q, k, qpos, kpos), atol=1e-6, rtol=0)
    assert got[1, 0, 3:].sum() == 0  # keys after query position 2 get nothing


def test_accumulated_attention_sums_columns_at_prefill_and_after_eviction():
    torch.manual_seed(2)
    q, k = torch.randn(6, 300, 16), torch.randn(2, 300, 16)
    pos = torch.arange(300)
    expected = direct_probs(q, k, pos, pos.expand(2, -1)).sum(1)
    got = accumulated_attention(q, k, pos, pos.expand(2, -1), chunk=64)  # aligned: triangle skipped
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    kept = torch.tensor([[0, 5, 9, 200, 299], [1, 2, 3, 150, 299]])  # held entries after eviction
    kk = k.gather(1, kept[..., None].expand(-1, -1, 16))
    got = accumulated_attention(q[:, -3:], kk, pos[-3:], kept, chunk=2)
    torch.testing.assert_close(got.double(), direct_probs(q[:, -3:], kk, pos[-3:], kept).sum(1), atol=1e-6, rtol=0)


def test_keep_top_protects_and_sorts():
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.2, 0.3]])
    protect = torch.tensor([[False, True, False, False, False]])
    assert keep_top(scores, 3, protect).tolist() == [[0, 1, 2]]


def test_recent_mask_counts_back_from_the_newest_entry():
    positions = torch.tensor([[0, 3, 7, 8, 9], [0, 1, 2, 8, 9]])
    assert recent_mask(positions, 2).tolist() == [[False, False, False, True, True]] * 2
