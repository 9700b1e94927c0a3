"""Attention scores that selectors use, computed from the layer's queries and the entries it holds.

GQA: a KV head serves a group of query heads (SmolLM2: 3 query heads per KV head). kvviz scores
an entry for its KV head by the **mean** of the attention probabilities of the group's query
heads; a policy that aggregates otherwise says so in its help.
"""

from __future__ import annotations

import math

import torch

from kvviz.policies import column_sums

NEG_INF = float("-inf")


def grouped_logits(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """queries (q_heads, q, d), keys (kv_heads, n, d) -> logits (kv_heads, group, q, n) in float32."""
    kv_heads, n, d = keys.shape
    q_heads, q_len, _ = queries.shape
    group = q_heads // kv_heads
    q = queries.reshape(kv_heads, group, q_len, d).float()
    return torch.einsum("hgqd,hnd->hgqn", q, keys.float()) / math.sqrt(d)


def attention_probs(
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    reduce: str = "mean",
) -> torch.Tensor:
    """Causal softmax attention of each query over the entries, per KV head.

    queries (q_heads, q, d); keys (kv_heads, n, d); query_positions (q,); key_positions
    (kv_heads, n). Returns (kv_heads, q, n) with the group's query heads reduced by ``reduce``
    ("mean" or "max"), or (kv_heads, group, q, n) when reduce is "none".
    """
    logits = grouped_logits(queries, keys)
    future = key_positions[:, None, None, :] > query_positions.to(key_positions.device)[None, None, :, None]
    probs = logits.masked_fill(future, NEG_INF).softmax(dim=-1)
    if reduce == "mean":
        return probs.mean(dim=1)
    if reduce == "max":
        return probs.amax(dim=1)
    return probs


def last_query_probs(layer) -> torch.Tensor:
    """(kv_heads, n): the attention of the step's last query over the layer's entries (a
    ``LayerView``, its queries captured), each group of query heads averaged. Computed once per
    step and kept in ``layer.scratch``: TOVA scores with it, H2O adds it up, and the cache
    measures the attention mass an eviction loses with it."""
    probs = layer.scratch.get("last_query_probs")
    if probs is None:
        queries, query_positions = layer.captured_queries()
        probs = attention_probs(queries[:, -1:], layer.keys, query_positions[-1:], layer.positions)[:, 0]
        layer.scratch["last_query_probs"] = probs
    return probs


def accumulated_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    chunk: int = 256,
    fused: bool = True,
) -> torch.Tensor:
    """Attention each entry received, summed over all queries: (kv_heads, n). Computed in chunks
    of queries so a long prefill never holds the whole q × n matrix.

    At prefill the entries are the queries' own tokens in order, so a chunk of queries ending at
    row ``end`` reads only the first ``end`` entries: the causal triangle above is skipped. There,
    on CUDA in half precision, two calls of the fused attention kernel give the same sums
    (``kvviz.policies.column_sums``; ``fused=False`` keeps the chunks)."""
    q_len, n = queries.shape[1], keys.shape[1]
    aligned = q_len == n  # prefill: entry i is query i's token
    if aligned and fused and column_sums.usable(queries, keys):
        return column_sums.prefill_column_sums(queries, keys)
    total = torch.zeros(keys.shape[0], n, device=keys.device, dtype=torch.float32)
    for start in range(0, q_len, chunk):
        end = min(start + chunk, q_len)
        width = end if aligned else n
        total[:, :width] += attention_probs(
            queries[:, start:end], keys[:, :width], query_positions[start:end], key_positions[:, :width]
        ).sum(dim=1)
    return total


def keep_top(scores: torch.Tensor, k: int, protect: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (kv_heads, k), ascending, of the k highest scores per KV head.

    ``protect`` (kv_heads, n) bool marks entries that are always kept (sinks, recent window):
    they rank above every scored entry. Dropping one entry of n (an evicting selector's steady
    decode step) is the argmin alone, where a tie for the lowest score evicts the oldest of the
    tied entries (top-k leaves a tie to its implementation); on CUDA this is one reduction where
    top-k and the sort of its indices took several kernels.
    """
    n = scores.shape[-1]
    k = min(k, n)
    ranked = scores.float()
    if protect is not None:
        ranked = ranked.masked_fill(protect, float("inf"))
    if k == n - 1:  # one entry in, one out (an evicting selector's decode step): no top-k, no sort
        slots = torch.arange(k, device=scores.device)
        return slots + (slots >= ranked.argmin(dim=-1, keepdim=True))
    idx = ranked.topk(k, dim=-1).indices
    return idx.sort(dim=-1).values


def recent_mask(positions: torch.Tensor, window: int) -> torch.Tensor:
    """(kv_heads, n) bool: entries among the last ``window`` tokens of the sequence.

    Measured from the newest entry (the token just fed is always held when a selector runs),
    so no per-step number enters the computation."""
    return positions > positions.amax(dim=-1, keepdim=True) - window


def first_mask(positions: torch.Tensor, n_first: int) -> torch.Tensor:
    """(kv_heads, n) bool: entries among the first ``n_first`` tokens (attention sinks)."""
    return positions < n_first


def random_draw(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Uniform numbers in [0, 1) from the run's seeded generator, drawn on the generator's device
    and moved to ``device``: the layers of a model split across GPUs share the run's one stream of
    draws, so a split run draws what a run on one device draws."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)
