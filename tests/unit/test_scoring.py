"""Attention scores from queries and keys, against a direct computation."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_keep_top_dropping_one_entry_evicts_the_lowest_and_the_oldest_of_a_tie():
    """One entry in, one out (k = n - 1): the argmin alone, no top-k; a tie for the lowest score
    evicts the oldest of the tied entries, and protected entries are never the one."""
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.1, 0.3], [0.2, 0.2, 0.2, 0.2, 0.2], [0.0, 0.4, 0.9, 0.8, 0.7]])
    protect = torch.tensor([[False] * 5, [False] * 5, [True, False, False, False, False]])
    assert keep_top(scores, 4, protect).tolist() == [[0, 2, 3, 4], [1, 2, 3, 4], [0, 2, 3, 4]]


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 40), st.integers(1, 4), st.integers(0, 2**31 - 1), st.floats(0, 1))
def test_keep_top_dropping_one_keeps_what_top_k_keeps_without_ties(n, rows, seed, share):
    """Scores without ties: the argmin path keeps exactly what top-k then a sort of its indices keeps."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randperm(rows * n, generator=g).reshape(rows, n).float()  # distinct: no ties
    protect = torch.rand(rows, n, generator=g) < share
    protect[:, 0] = False  # at least one entry can leave (a decode step protects at most the budget)
    ranked = scores.masked_fill(protect, float("inf"))
    assert torch.equal(keep_top(scores, n - 1, protect), ranked.topk(n - 1, dim=-1).indices.sort(dim=-1).values)
