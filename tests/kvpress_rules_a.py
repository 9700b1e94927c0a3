"""kvpress's KeyDiffPress, ObservedAttentionPress and LagKVPress, re-implemented for the tests
from NVIDIA/kvpress's code (never from kvviz's), on one layer's tensors in float64. Each cites the
commit, file and lines it follows. The kept entries are ``ScorerPress.compress``'s top-k of the
scores (NVIDIA/kvpress, kvpress/presses/scorer_press.py, ``compress``), with the number kept
given by the caller."""

from __future__ import annotations

import math

import torch


def topk_keep(scores: torch.Tensor, n_kept: int) -> list[list[int]]:
    """scores (kv_heads, n) -> per KV head the sorted indices of the ``n_kept`` highest."""
    return [sorted(row.tolist()) for row in scores.topk(n_kept, dim=-1).indices]


def keydiff_scores(keys: torch.Tensor) -> torch.Tensor:
    """``KeyDiffPress.score`` (NVIDIA/kvpress, commit 08a43bf, kvpress/presses/keydiff_press.py,
    lines 32-33), written out: anchor = mean over tokens of k / |k|; score = -(k . anchor) /
    (|k| |anchor|). keys (kv_heads, n, d) -> (kv_heads, n)."""
    unit = keys / keys.norm(dim=-1, keepdim=True)
    anchor = unit.mean(dim=1, keepdim=True)  # (kv_heads, 1, d)
    return -(keys * anchor).sum(-1) / (keys.norm(dim=-1) * anchor.norm(dim=-1))


def observed_attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``ObservedAttentionPress.score`` (NVIDIA/kvpress, commit 08a43bf,
    kvpress/presses/observed_attention_press.py, lines 57-63) on the eager attention weights of
    the prefill: q (q_heads, n, d), k (kv_heads, n, d), RoPE applied. Weights (q_heads, n, n)
    causal softmax (k repeated per query head as repeat_kv does), summed over the queries,
    divided by arange(n, 0, -1), then the q_heads viewed as (kv_heads, group) and averaged."""
    q_heads, n, d = q.shape
    kv_heads = k.shape[0]
    k_rep = k.repeat_interleave(q_heads // kv_heads, dim=0)  # repeat_kv
    logits = q @ k_rep.transpose(1, 2) / math.sqrt(d)  # (q_heads, n, n)
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    weights = logits.masked_fill(future, float("-inf")).softmax(dim=-1)
    scores = weights.sum(1) / torch.arange(n, 0, -1, dtype=weights.dtype)  # (q_heads, n)
    return scores.view(kv_heads, -1, n).mean(1)


def lagkv_scores(keys: torch.Tensor, values: torch.Tensor, n_sink: int = 4, lag_size: int = 128,
                 cross_scoring: bool = False) -> torch.Tensor:
    """``LagKVPress.score`` (NVIDIA/kvpress, commit 08a43bf, kvpress/presses/lagkv_press.py,
    lines 55-86) with ``_get_states_score`` (lines 88-97): keys, values (kv_heads, n, d) ->
    (kv_heads, n). Sinks and the tail (the last whole partition and the remainder) score 1."""
    h, n, d = keys.shape
    if n < n_sink + 2 * lag_size:  # lines 56-65: no compression, the newest rank highest
        score = torch.ones(h, n, dtype=keys.dtype)
        if n > n_sink:
            score[:, n_sink:] = torch.arange(n - n_sink, dtype=keys.dtype) / (n - n_sink)
        return score
    end_idx = n_sink + ((n - n_sink) // lag_size) * lag_size
    tail_len = lag_size + n - end_idx

    def states(x):  # (h, parts, lag, d) -> (h, parts - 1, lag)
        parts = x.shape[1]
        out = torch.empty(h, parts - 1, lag_size, dtype=x.dtype)
        for p in range(parts - 1):
            ref = x[:, p + 1]  # (h, lag, d): the partition after p
            mn, mx = ref.min(dim=1).values[:, None], ref.max(dim=1).values[:, None]
            out[:, p] = ((x[:, p] - mn) / (mx - mn)).std(dim=-1).softmax(dim=-1)
        return out

    part = (states(keys[:, n_sink:end_idx].reshape(h, -1, lag_size, d))
            + states(values[:, n_sink:end_idx].reshape(h, -1, lag_size, d))) / 2
    if not cross_scoring:
        part = (part.argsort(dim=-1).argsort(dim=-1) / lag_size).to(keys.dtype)
    return torch.cat([torch.ones(h, n_sink, dtype=part.dtype), part.reshape(h, -1),
                      torch.ones(h, tail_len, dtype=part.dtype)], dim=-1)
