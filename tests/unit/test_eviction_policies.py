"""Selectors on hand-built tensors: exactly which positions each policy keeps.

Keys are one-hot vectors and queries are scaled so that the attention logits are the numbers
written in the test (logit = q . k / sqrt(d)), which makes every answer known in advance.
Multi-step tests go through the real PolicyCache layer (append, select, gather the stats).
"""

import math

import pytest
import torch

from kvviz.runtime.policy_cache import PolicyCache
from kvviz.policies import LayerView, PolicyError, StepContext, build
from kvviz.policies.merge import evicted_indices
from kvviz.policies.pyramidkv import PyramidKV

D = 8  # head_dim of the hand-built tensors


def one_hot_keys(kv_heads, n, d=D):
    return torch.eye(d)[:n].expand(kv_heads, n, d).clone()  # (kv_heads, n, d): entry j = e_j


def queries_with_logits(logits):
    """logits (q_heads, q_len, n) -> queries (q_heads, q_len, D) whose logits on one-hot keys are these."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    q = torch.zeros(*logits.shape[:-1], D)
    q[..., : logits.shape[-1]] = logits * math.sqrt(D)
    return q


def view(keys, *, queries=None, query_positions=None, positions=None, stats=None, n_new=None, values=None):
    kv_heads, n, _ = keys.shape
    positions = torch.arange(n).expand(kv_heads, n).clone() if positions is None else positions
    return LayerView(
        layer_idx=0,
        n_layers=1,
        keys=keys,
        values=keys.clone() if values is None else values,
        positions=positions,
        stats={} if stats is None else stats,
        queries=queries,
        query_positions=query_positions,
        n_new=n if n_new is None else n_new,
    )


def selector(spec, budget, **params):
    return build(spec, params, budget=budget).selector


def kept_positions(sel, v):
    return v.positions.gather(1, sel.keep).tolist()


def cache_for(spec, budget, prompt_len, kv_heads=1, n_layers=1, **params):
    pipeline = build(spec, params, budget=budget)
    return PolicyCache(pipeline, n_layers, prompt_len, 64, kv_heads, torch.device("cpu"), generator=torch.Generator().manual_seed(0))


def feed(cache, keys, queries=None):
    """One forward of a one-layer cache: keys (kv_heads, q, d) enter; returns the kept positions."""
    layer = cache.layers[0]
    positions = torch.arange(layer.seen, layer.seen + keys.shape[1])
    layer.step(keys[None], keys[None].clone(), positions, queries)
    return layer.positions.tolist()


# ------------------------------------------------------------------------- streaming_llm


def test_streaming_llm_keeps_sinks_and_recent_window():
    cache = cache_for("streaming_llm", 5, 10, kv_heads=2, n_sink=2)
    keys = torch.randn(2, 12, D, generator=torch.Generator().manual_seed(0))
    assert feed(cache, keys[:, :10]) == [[0, 1, 7, 8, 9]] * 2
    assert feed(cache, keys[:, 10:11]) == [[0, 1, 8, 9, 10]] * 2
    assert feed(cache, keys[:, 11:12]) == [[0, 1, 9, 10, 11]] * 2
    assert len(cache.layers[0].store) == 5  # evicted entries left the tensors


def test_streaming_llm_budget_must_exceed_sinks():
    with pytest.raises(PolicyError, match="budget 4 leaves no recent window after 4 sink tokens"):
        cache_for("streaming_llm", 4, 10, n_sink=4)


# ----------------------------------------------------------------------------------- tova

# 4 query heads, 2 KV heads (groups {q0, q1} and {q2, q3}), 5 entries; logits of the last query
TOVA_LOGITS = [
    [5, 0, 0, 0, 5],  # q0: entries 0 and 4
    [5, 0, 5, 0, 0],  # q1: entries 0 and 2
    [0, 5, 0, 5, 0],  # q2: entries 1 and 3
    [0, 5, 0, 5, 3],  # q3: entries 1 and 3, and a little 4
]


def tova_view():
    queries = queries_with_logits([[row] for row in TOVA_LOGITS])  # (4, 1, D)
    return view(one_hot_keys(2, 5), queries=queries, query_positions=torch.tensor([4]))


def test_tova_layer_mean_over_all_heads():
    v = tova_view()
    sel = selector("tova", 3).step(v, StepContext(step=0, prompt_len=5, seq_len=5, budget=3))
    # mean over the 4 heads: entry 0 ~0.99, entries 1 and 3 ~0.96, entry 4 ~0.56, entry 2 ~0.50
    assert kept_positions(sel, v) == [[0, 1, 3], [0, 1, 3]]
    assert torch.equal(sel.scores[0], sel.scores[1])


def test_tova_per_kv_head():
    v = tova_view()
    sel = selector("tova", 3, per_kv_head=True).step(v, StepContext(step=0, prompt_len=5, seq_len=5, budget=3))
    assert kept_positions(sel, v) == [[0, 2, 4], [1, 3, 4]]


def test_tova_decode_exact():
    cache = cache_for("tova", 3, 3, kv_heads=1)
    keys = one_hot_keys(1, 5)
    feed(cache, keys[:, :3], queries_with_logits([[[0, 0, 0]] * 3]))
    assert feed(cache, keys[:, 3:4], queries_with_logits([[[4, 0, 4, 4]]])) == [[0, 2, 3]]
    # held: positions 0, 2, 3 and the new 4 (key e_4); the query looks at 3 and 4, then 0
    assert feed(cache, keys[:, 4:5], queries_with_logits([[[2, 0, 0, 4, 4]]])) == [[0, 3, 4]]


# ------------------------------------------------------------------------------ pyramidkv


def test_pyramidkv_budgets_follow_the_released_schedule():
    # KVCache-Factory's PyramidKVCluster: the 64 - 32 entries outside the window form the pyramid,
    # (64 - 32) // 20 = 1 at the top, 2 x 32 - 1 = 63 at the bottom, down by (63 - 1) // 29 = 2
    p = PyramidKV(budget=64, beta=20.0, window=32)
    budgets = [p.layer_budget(64, i, 30) for i in range(30)]
    assert budgets == [95 - 2 * i for i in range(30)]  # 95 ... 37: the window in every layer
    assert sum(budgets) == 1980  # the whole steps leave the total a little above 30 x 64
    # a prompt of 80: the bottom is cut to 80 - 32 = 48 and the top raised to 64 - 48 = 16
    assert [p.layer_budget(64, i, 30, 80) for i in (0, 1, 29)] == [80, 79, 51]
    assert p.layer_budget(64, 5, 30, 63) == 64  # below 2 x (64 - 32): SnapKV's budget everywhere
    assert p.layer_budget(None, 3, 30) is None and p.layer_budget(64, 0, 1) == 64
    assert PyramidKV(window=32).layer_budget(16, 4, 30, 100) == 16  # no room outside the window


def test_pyramidkv_layers_keep_their_own_budget():
    cache = cache_for("pyramidkv", 8, 16, kv_heads=1, n_layers=2, beta=4.0, window=2)
    assert cache.layer_budgets == [13, 3]  # 2 x 6 - 6 // 4 and 6 // 4, each with the window of 2
    keys = torch.randn(1, 16, D, generator=torch.Generator().manual_seed(0))
    queries = torch.randn(1, 16, D, generator=torch.Generator().manual_seed(1))
    for layer in cache.layers:
        layer.step(keys[None], keys[None].clone(), torch.arange(16), queries)
    # the observation window is kept in every layer, with the layer's own number of others
    assert len(cache.layers[0].positions[0]) == 13 and cache.layers[0].positions[0, -2:].tolist() == [14, 15]
    assert len(cache.layers[1].positions[0]) == 3 and cache.layers[1].positions[0, -2:].tolist() == [14, 15]


# ---------------------------------------------------------------------------------- knorm


def test_knorm_keeps_lowest_key_norms_per_head():
    keys = torch.zeros(2, 5, D)
    keys[0, :, 0] = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0])
    keys[1, :, 1] = torch.tensor([1.0, 6.0, 0.5, 7.0, 2.0])
    v = view(keys)
    sel = selector("knorm", 2).step(v, StepContext(step=0, prompt_len=5, seq_len=5, budget=2))
    assert kept_positions(sel, v) == [[1, 3], [0, 2]]
    assert sel.scores[0].tolist() == [-5.0, -1.0, -3.0, -2.0, -4.0]


def test_knorm_sinks_and_recent():
    keys = torch.zeros(1, 6, D)
    keys[0, :, 0] = torch.tensor([9.0, 1.0, 3.0, 2.0, 4.0, 8.0])
    v = view(keys)
    sel = selector("knorm", 3, n_sink=1, recent=1).step(v, StepContext(step=0, prompt_len=6, seq_len=6, budget=3))
    assert kept_positions(sel, v) == [[0, 1, 5]]
    with pytest.raises(PolicyError, match="exceed the budget"):
        cache_for("knorm", 3, 6, n_sink=2, recent=2)


# ------------------------------------------------------------------------------ lru / lfu


def test_lru_evicts_least_recently_used_ties_oldest_first():
    cache = cache_for("lru", 4, 5, kv_heads=1, threshold=0.5)
    keys = one_hot_keys(1, 6)
    prefill = queries_with_logits(
        [[
            [0, 0, 0, 0, 0],  # q0 sees only entry 0: a use of 0 at 0
            [9, 0, 0, 0, 0],  # q1 uses 0
            [0, 9, 0, 0, 0],  # q2 uses 1
            [9, 0, 0, 0, 0],  # q3 uses 0
            [0, 0, 0, 0, 0],  # q4 spreads (0.2 each): no use
        ]]
    )
    # last use (entering counts): [3, 2, 2, 3, 4]; entries 1 and 2 tie, the older (1) goes
    assert feed(cache, keys[:, :5], prefill) == [[0, 2, 3, 4]]
    assert cache.layers[0].stats["last_use"].tolist() == [[3, 2, 3, 4]]
    # the new entry 5 enters at 5; its query uses entry 2: [3, 5, 3, 4, 5]; 0 and 3 tie, 0 goes
    assert feed(cache, keys[:, 5:6], queries_with_logits([[[0, 0, 9, 0, 0, 0]]])) == [[2, 3, 4, 5]]


def test_lfu_evicts_least_frequently_used_ties_oldest_first():
    cache = cache_for("lfu", 4, 5, kv_heads=1, threshold=0.5, recent=1)
    keys = one_hot_keys(1, 6)
    prefill = queries_with_logits(
        [[
            [0, 0, 0, 0, 0],  # q0 uses 0
            [0, 9, 0, 0, 0],  # q1 uses 1
            [9, 0, 0, 0, 0],  # q2 uses 0
            [0, 9, 0, 0, 0],  # q3 uses 1
            [0, 0, 0, 0, 0],  # q4 spreads: no use
        ]]
    )
    # counts [2, 2, 0, 0, 0]; 4 is recent; 2 and 3 tie at 0, the older (2) goes
    assert feed(cache, keys[:, :5], prefill) == [[0, 1, 3, 4]]
    assert cache.layers[0].stats["use_count"].tolist() == [[2, 2, 0, 0]]
    # the query of 5 uses 3: counts [2, 2, 1, 0, 0]; 5 is recent; 4 has the fewest uses
    assert feed(cache, keys[:, 5:6], queries_with_logits([[[0, 0, 0, 9, 0, 0]]])) == [[0, 1, 3, 5]]


# --------------------------------------------------------------------------------- random


def test_random_is_seeded_and_independent_per_head():
    v = view(torch.randn(2, 10, D))
    sel = selector("random", 4).step(v, StepContext(step=0, prompt_len=10, seq_len=10, budget=4, generator=torch.Generator().manual_seed(5)))
    expected = torch.rand(2, 10, generator=torch.Generator().manual_seed(5)).topk(4).indices.sort().values
    assert sel.keep.tolist() == expected.tolist()
    assert sel.keep[0].tolist() != sel.keep[1].tolist()
    again = selector("random", 4).step(v, StepContext(step=0, prompt_len=10, seq_len=10, budget=4, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(sel.keep, again.keep)


# ------------------------------------------------------------------------- sparse_pattern


def test_sparse_pattern_global_random_blocks_and_window():
    # budget 15 = 2 global + 2 blocks of 4 + a window of 5; prompt of 30
    cache = cache_for("sparse_pattern", 15, 30, kv_heads=2, n_global=2, block_size=4, random_blocks=2)
    keys = torch.randn(2, 31, D, generator=torch.Generator().manual_seed(0))
    # complete blocks between the globals and the window (positions 2 .. 24): [2,6) [6,10) [10,14) [14,18) [18,22)
    chosen = torch.rand(2, 5, generator=torch.Generator().manual_seed(0)).topk(2).indices.sort().values
    blocks = [sum((list(range(2 + 4 * int(b), 6 + 4 * int(b))) for b in head), []) for head in chosen]
    kept = feed(cache, keys[:, :30])
    assert kept == [[0, 1] + blocks[h] + list(range(25, 30)) for h in range(2)]
    assert kept[0] != kept[1]  # drawn per KV head
    scores = cache.scores[0, :, :30]
    assert scores[0, 0].item() == 3.0 and scores[0, blocks[0][0]].item() == 2.0 and scores[0, 29].item() == 1.0
    # decode: the window slides, the random blocks stay
    assert feed(cache, keys[:, 30:31]) == [[0, 1] + blocks[h] + list(range(26, 31)) for h in range(2)]


def test_sparse_pattern_budget_must_leave_a_window():
    with pytest.raises(PolicyError, match="leaves no local window"):
        cache_for("sparse_pattern", 12, 30, n_global=4, block_size=4, random_blocks=2)


# ---------------------------------------------------------------------------------- merge


def merge_view():
    # entries 0..3 of one KV head (one query head); keys and values in 2-d, padded to D
    keys = torch.zeros(1, 4, D)
    keys[0, :, :2] = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, -0.1]])
    values = torch.zeros(1, 4, D)
    values[0, :, :2] = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    # accumulated so far; the zero query adds 1/4 to each: [1.0, 0.3, 0.7, 0.5]
    stats = {"acc_attention": torch.tensor([[0.75, 0.05, 0.45, 0.25]])}
    queries = torch.zeros(1, 1, D)
    return view(keys, values=values, queries=queries, query_positions=torch.tensor([3]), stats=stats, n_new=1)


def test_merge_folds_the_evicted_entry_into_its_most_similar_kept_key():
    v = merge_view()
    sel = selector("merge", 3, recent=1).step(v, StepContext(step=1, prompt_len=3, seq_len=4, budget=3))
    assert kept_positions(sel, v) == [[0, 2, 3]]  # entry 1 (0.3) leaves; its key is closest to entry 2's
    # k2' = (0.7 (0, 1) + 0.3 (0.6, 0.8)) / 1.0, v2' = (0.7 (0, 2) + 0.3 (2, 0)) / 1.0
    assert torch.allclose(sel.keys[0, :, :2], torch.tensor([[1.0, 0.0], [0.18, 0.94], [-1.0, -0.1]]))
    assert torch.allclose(sel.values[0, :, :2], torch.tensor([[1.0, 1.0], [0.6, 1.4], [3.0, 3.0]]))
    assert torch.allclose(sel.scores, torch.tensor([[1.0, 0.3, 0.7, 0.5]]))
    # the kept entry inherits the attention (the cache gathers the stat with `keep`)
    assert torch.allclose(v.stats["acc_attention"].gather(1, sel.keep), torch.tensor([[1.0, 1.0, 0.5]]))


def test_merge_several_evicted_into_one():
    v = merge_view()
    sel = selector("merge", 2, recent=1).step(v, StepContext(step=1, prompt_len=3, seq_len=4, budget=2))
    assert kept_positions(sel, v) == [[0, 3]]  # 1 and 2 leave, both closest to entry 0
    # k0' = (1.0 (1, 0) + 0.3 (0.6, 0.8) + 0.7 (0, 1)) / 2.0, v0' = (1.0 (1, 1) + 0.3 (2, 0) + 0.7 (0, 2)) / 2.0
    assert torch.allclose(sel.keys[0, :, :2], torch.tensor([[0.59, 0.47], [-1.0, -0.1]]))
    assert torch.allclose(sel.values[0, :, :2], torch.tensor([[0.8, 1.2], [3.0, 3.0]]))
    assert torch.allclose(v.stats["acc_attention"].gather(1, sel.keep), torch.tensor([[2.0, 0.5]]))


def test_merge_through_the_cache_replaces_the_stored_entries():
    cache = cache_for("merge", 2, 3, kv_heads=1, recent=1)
    keys = torch.zeros(1, 3, D)
    keys[0, :, :2] = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    feed(cache, keys, torch.zeros(1, 3, D))  # uniform attention: acc [1/1 + 1/2 + 1/3, 1/2 + 1/3, 1/3]
    assert cache.layers[0].positions.tolist() == [[0, 2]]
    a0, a1 = 1 + 1 / 2 + 1 / 3, 1 / 2 + 1 / 3
    stored, _ = cache.layers[0].store.materialize()
    expected0 = (a0 * torch.tensor([1.0, 0.0]) + a1 * torch.tensor([0.8, 0.6])) / (a0 + a1)
    assert torch.allclose(stored[0, 0, :2], expected0)
    assert torch.allclose(cache.layers[0].stats["acc_attention"], torch.tensor([[a0 + a1, 1 / 3]]))


def test_evicted_indices_is_the_complement():
    keep = torch.tensor([[0, 2, 5], [1, 3, 4]])
    assert evicted_indices(keep, 6).tolist() == [[1, 3, 4], [0, 2, 5]]
