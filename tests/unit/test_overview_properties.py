"""The overview's one-layer kernel (``kvviz.attention.maps._layer_overview``) against a float64
computation from first principles (softmax of the masked scores, then pooling and the profiles'
definitions), for random shapes, tiles, chunk budgets, sliding windows and soft-capping."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvviz.attention import maps
from kvviz.attention.data import pool_matrix, tile_size
from kvviz.model.capture import LayerQK


def direct(qk: LayerQK, tile: int, pool: str, sink: int, local: int, from_query: int):
    """Thumbnails (H, grid, grid) and the profiles' sums over queries from_query.. ({name: (H,)}), float64."""
    n, H, group = qk.seq_len, qk.n_q_heads, qk.group_size
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    visible = j <= i
    if qk.sliding_window:
        visible &= j > i - qk.sliding_window
    thumbs, sums = [], {k: np.zeros(H) for k in ("sink", "local", "ent", "nent", "dist")}
    for h in range(H):
        s = (qk.q[h].double() @ qk.k[h // group].double().T).numpy() * qk.scaling
        if qk.softcap:
            s = np.tanh(s / qk.softcap) * qk.softcap
        s = np.where(visible, s, -np.inf)
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        thumbs.append(pool_matrix(p, tile, pool, window=qk.sliding_window))
        rows = np.arange(from_query, n)
        ent = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(1)[rows]
        sums["ent"][h] = ent.sum()
        sums["nent"][h] = (ent / np.maximum(np.log(rows + 1), 1e-9)).sum()
        sums["sink"][h] = p[rows, :sink].sum()
        sums["local"][h] = sum(p[r, max(0, r - local + 1) : r + 1].sum() for r in rows)
        sums["dist"][h] = sum(r - (p[r] * np.arange(n)).sum() for r in rows)
    return np.stack(thumbs), sums


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 40),
    kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 3]),
    cells=st.integers(1, 12),
    pool=st.sampled_from(maps.POOLS),
    window=st.one_of(st.none(), st.integers(1, 12)),
    softcap=st.one_of(st.none(), st.sampled_from([2.0, 30.0])),
    rows_per_chunk=st.integers(1, 50),
    scale=st.sampled_from([0.5, 4.0]),  # larger logits: peaked rows
    seed=st.integers(0, 2**16),
)
def test_layer_overview_is_the_softmax_pooled_and_summed(n, kv_heads, group, cells, pool, window, softcap, rows_per_chunk, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    d = 8
    qk = LayerQK(layer=0, q=torch.randn(kv_heads * group, n, d, generator=gen) * scale, k=torch.randn(kv_heads, n, d, generator=gen),
                 scaling=d**-0.5, sliding_window=window, softcap=softcap)
    tile = tile_size(n, cells)
    sink, local = 2, 3
    from_query = min(max(sink, local), n // 2)
    budget = rows_per_chunk * kv_heads * group * n  # rows_per_chunk query rows a chunk (fewer than a tile, or several tiles)
    thumbs, acc = maps._layer_overview(qk, tile, pool, sink, local, from_query, budget)
    want_thumbs, want = direct(qk, tile, pool, sink, local, from_query)
    assert thumbs.shape == (kv_heads * group, math.ceil(n / tile), math.ceil(n / tile))
    np.testing.assert_allclose(thumbs.numpy(), want_thumbs, atol=2e-6, equal_nan=True)
    rows = max(1, n - from_query)
    for name, value in want.items():
        np.testing.assert_allclose(acc[name].numpy() / rows, value / rows, atol=2e-5, err_msg=name)
