"""Attention maps computed on demand, from the queries and keys captured by ``kvviz.model.capture``.

softmax(q kᵀ · scaling) with the causal mask is computed a chunk of queries at a time, for the
heads being looked at only. Long sequences are pooled into tiles (max or mean) as they are
computed, so the full matrix never exists; a window of tokens can be viewed at full resolution.

Entry points:

* ``overview(model, ids)``: one pass over every layer and head: a small pooled thumbnail of
  each head's attention and its profile (mass on the first tokens, locality, entropy, distance).
  It may keep each layer's queries and keys (``keep_qk_bytes``) so that a detail view of any
  layer needs no second forward pass.
* ``attention_view(qk, head, ...)``: one head of one layer: the (pooled or full-resolution) window
  of the attention matrix, the attention each key receives over all queries (the H2O score), the
  entropy of every query's row, and optionally the mass each query puts on evicted keys.
  ``attention_rows(qk, head, rows)`` gives exact rows.

Sequences are the full id sequence a run saw: the prompt and the generated tokens after it
(``prompt_len`` marks the boundary); a query at position i sees keys 0..i. This module never
imports streamlit.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from kvviz.attention.data import POOLS, AttentionView, HeadProfiles, Overview, pool_matrix, tile_size  # noqa: F401
from kvviz.attention.data import window_bounds
from kvviz.model.capture import CaptureError, LayerQK, _run_with_hooks

DEFAULT_CHUNK_ELEMENTS = 1 << 24  # scores per chunk (heads x queries x keys): 64 MiB in float32
CUDA_CHUNK_ELEMENTS = 1 << 28  # the overview's on a GPU: 1 GiB per float32 temporary, a few alive at once


# ---------------------------------------------------------------------------------------------
# the chunked attention kernel


def _window(n: int, q_range, k_range) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        return window_bounds(n, q_range, k_range)
    except ValueError as exc:
        raise CaptureError(str(exc)) from None


def _check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise CaptureError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}.")


def _chunk_scores(qk: LayerQK, q_heads: torch.Tensor, kv_head: int | None, r0: int, r1: int) -> torch.Tensor:
    """Scores of queries r0..r1 over keys 0..r1 for some query heads: (H, C, r1) float32 with
    C = r1 - r0, -inf where a query cannot see the key.

    q_heads: (H, seq, d) float32 queries: every query head of the layer in order (``kv_head``
    None: each group of query heads is multiplied with its own KV head), or heads that all read
    KV head ``kv_head``."""
    dev = q_heads.device
    H, d = q_heads.shape[0], q_heads.shape[-1]
    C = r1 - r0
    k = qk.k[:, :r1].to(dev, torch.float32)  # (kv_heads, r1, d)
    q = q_heads[:, r0:r1] * qk.scaling  # (H, C, d), contiguous
    if kv_head is None:
        G = qk.n_kv_heads
        s = torch.matmul(q.view(G, (H // G) * C, d), k.transpose(1, 2)).view(H, C, r1)  # GQA without repeating k
    else:
        s = torch.matmul(q, k[kv_head].transpose(0, 1))  # (H, C, r1)
    if qk.softcap:
        s.div_(qk.softcap).tanh_().mul_(qk.softcap)
    if qk.sliding_window:
        s.masked_fill_(~_visible(r0, r1, qk.sliding_window, dev), float("-inf"))
    else:  # only the last C keys are ahead of some query of the chunk
        ahead = torch.ones(C, C, dtype=torch.bool, device=dev).triu_(1)
        s[:, :, r0:].masked_fill_(ahead, float("-inf"))
    return s


def _visible(r0: int, r1: int, window: int | None, dev) -> torch.Tensor:
    """(C, r1) bool: which keys 0..r1 the queries r0..r1 see (causal, within ``window``)."""
    i = torch.arange(r0, r1, device=dev)[:, None]
    j = torch.arange(r1, device=dev)[None, :]
    visible = j <= i
    if window:
        visible &= j > i - window
    return visible


def _chunk_probs(qk: LayerQK, q_heads: torch.Tensor, kv_head: int | None, r0: int, r1: int, entropy: bool = False):
    """Attention probabilities of queries r0..r1 over keys 0..r1 (``_chunk_scores``' arguments).
    Returns p (H, C, r1) float32 (0 where masked), visible (C, r1) bool, and with ``entropy``
    each row's entropy (H, C) in nats, else None."""
    s = _chunk_scores(qk, q_heads, kv_head, r0, r1)
    visible = _visible(r0, r1, qk.sliding_window, s.device)
    # softmax by hand, so that the entropy needs no logarithm per cell:
    # -sum p log p = log Z - sum p (s - max), with p = exp(s - max) / Z
    s.sub_(s.amax(-1, keepdim=True))  # every row sees at least its own key
    p = s.exp()
    z = p.sum(-1, keepdim=True)  # (H, C, 1)
    p.div_(z)
    ent = None
    if entropy:
        s.masked_fill_(~visible, 0.0)
        ent = torch.log(z[..., 0]) - torch.linalg.vecdot(p, s)
    return p, visible, ent


def _pool_block(p: torch.Tensor, visible: torch.Tensor, tile: int, pool: str) -> torch.Tensor:
    """Pool p (H, R, K) into (H, ceil(R/tile), ceil(K/tile)) tiles over visible cells; NaN if none."""
    H, R, K = p.shape
    pr, pk = (-R) % tile, (-K) % tile
    if pr or pk:
        p = torch.nn.functional.pad(p, (0, pk, 0, pr))
        visible = torch.nn.functional.pad(visible, (0, pk, 0, pr))
    nr, nc = (R + pr) // tile, (K + pk) // tile
    count = visible.view(nr, tile, nc, tile).sum((1, 3))  # (nr, nc)
    blocks = p.reshape(H, nr, tile, nc, tile)
    if pool == "max":
        out = blocks.amax((2, 4))  # masked cells are exactly 0 and p >= 0
    else:
        out = blocks.sum((2, 4)) / count.clamp(min=1)
    return out.masked_fill(count[None] == 0, float("nan"))


def _chunks(bounds: Sequence[tuple[int, int, int]]):
    """Yield (r0, r1) covering each (start, stop, step) span in order."""
    for start, stop, step in bounds:
        for r0 in range(start, stop, step):
            yield r0, min(r0 + step, stop)


def _rows_per_chunk(n_heads: int, n_keys: int, tile: int, budget: int, whole_tiles: bool = True) -> int:
    """Query rows per chunk: within the budget of scores, and at most 256 rows (or one tile) so
    that the causal triangle wastes little (chunk r1 sees keys 0..r1). A multiple of the tile with
    ``whole_tiles``; else fewer rows than a tile when the budget asks (the overview puts each row
    into its tile row by index: a long sequence's tiles are long)."""
    rows = min(max(1, budget // max(1, n_heads * n_keys)), max(256, tile))
    if rows < tile and not whole_tiles:
        return rows
    return max(tile, rows // tile * tile)


@torch.inference_mode()
def attention_view(
    qk: LayerQK,
    head: int,
    *,
    q_range: tuple[int, int] | None = None,
    k_range: tuple[int, int] | None = None,
    max_cells: int = 128,
    pool: str = "max",
    evicted: np.ndarray | None = None,
    prompt_len: int | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> AttentionView:
    """One head: the window ``q_range`` x ``k_range`` (token positions, stop exclusive; default
    all) pooled to at most ``max_cells`` tiles a side (full resolution when the window fits), and
    over all queries the key scores, row entropies and, with ``evicted`` (seq,) bool, the mass
    each query puts on evicted keys."""
    _check_pool(pool)
    n = qk.seq_len
    if not 0 <= head < qk.n_q_heads:
        raise CaptureError(f"Head {head} out of range: the layer has query heads 0..{qk.n_q_heads - 1}.")
    (qa, qb), (ka, kb) = _window(n, q_range, k_range)
    tile = tile_size(max(qb - qa, kb - ka), max_cells)
    dev = qk.q.device
    q = qk.q[head : head + 1].to(torch.float32)  # (1, seq, d)
    ev = None
    if evicted is not None:
        evicted = np.asarray(evicted, dtype=bool)
        if evicted.shape != (n,):
            raise CaptureError(f"evicted must have one entry per position ({n}), not {evicted.shape}.")
        ev = torch.from_numpy(evicted.astype(np.float32)).to(dev)

    n_rows, n_cols = math.ceil((qb - qa) / tile), math.ceil((kb - ka) / tile)
    values = torch.full((n_rows, n_cols), float("nan"), device=dev)
    key_score = torch.zeros(n, device=dev)
    entropy = torch.zeros(n, device=dev)
    ev_mass = torch.zeros(n, device=dev) if ev is not None else None
    step = _rows_per_chunk(1, n, tile, chunk_elements)
    spans = [(0, qa, step), (qa, qb, step), (qb, n, step)]  # chunks inside the window start on tile rows
    for r0, r1 in _chunks(spans):
        p, visible, ent = _chunk_probs(qk, q, qk.kv_head(head), r0, r1, entropy=True)  # (1, C, r1)
        key_score[:r1] += p[0].sum(0)
        entropy[r0:r1] = ent[0]
        if ev is not None:
            ev_mass[r0:r1] = p[0] @ ev[:r1]
        if qa <= r0 < qb and ka < r1:
            kstop = min(kb, r1)
            block = _pool_block(p[:, :, ka:kstop], visible[:, ka:kstop], tile, pool)[0]
            tr = (r0 - qa) // tile
            values[tr : tr + block.shape[0], : block.shape[1]] = block
    return AttentionView(
        layer=qk.layer, head=head, kv_head=qk.kv_head(head),
        values=values.cpu().numpy(), q_start=qa, q_stop=qb, k_start=ka, k_stop=kb, tile=tile, pool=pool,
        seq_len=n, prompt_len=prompt_len if prompt_len is not None else (qk.prompt_len or n),
        key_score=key_score.cpu().numpy(), row_entropy=entropy.cpu().numpy(),
        evicted=evicted, evicted_mass=None if ev_mass is None else ev_mass.cpu().numpy(),
    )


@torch.inference_mode()
def attention_rows(qk: LayerQK, head: int, rows: Sequence[int]) -> np.ndarray:
    """Exact attention rows of query ``head`` at positions ``rows``: (len(rows), seq) float32,
    zero after each query's own position."""
    n = qk.seq_len
    rows = [int(r) for r in rows]
    if any(not 0 <= r < n for r in rows):
        raise CaptureError(f"Query positions must lie in 0..{n - 1}.")
    out = np.zeros((len(rows), n), dtype=np.float32)
    q = qk.q[head : head + 1].to(torch.float32)
    for i, r in enumerate(rows):
        p, _, _ = _chunk_probs(qk, q, qk.kv_head(head), r, r + 1)
        out[i, : r + 1] = p[0, 0].cpu().numpy()
    return out


def full_attention(qk: LayerQK, head: int) -> np.ndarray:
    """The whole (seq, seq) attention matrix of one head; for small sequences (tests, exports)."""
    return attention_rows(qk, head, range(qk.seq_len))


# ---------------------------------------------------------------------------------------------
# the overview pass


def _tile_counts(n: int, tile: int, window: int | None, dev) -> torch.Tensor:
    """(grid, grid) float32: how many cells of each tile of the (n, n) matrix a query sees."""
    i = torch.arange(n, device=dev)[:, None]
    c0 = torch.arange(0, n, tile, device=dev)[None, :]  # each column tile's first key
    lo = torch.maximum(c0, i - window + 1) if window else c0
    per_row = (torch.minimum(i + 1, (c0 + tile).clamp(max=n)) - lo).clamp(min=0)  # (n, grid)
    grid = c0.shape[1]
    return torch.zeros(grid, grid, device=dev).index_add_(0, i[:, 0] // tile, per_row.float())


def _tile_reduce(e: torch.Tensor, tile: int, pool: str) -> torch.Tensor:
    """(H, C, K) -> (H, C, ceil(K/tile)): each row's max or sum over each tile of columns."""
    K = e.shape[-1]
    whole = K // tile * tile
    reduce = (lambda x: x.amax(-1)) if pool == "max" else (lambda x: x.sum(-1))
    parts = [reduce(e[..., :whole].unflatten(-1, (K // tile, tile)))] if whole else []
    if whole < K:
        parts.append(reduce(e[..., whole:])[..., None])
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def _layer_overview(qk: LayerQK, tile: int, pool: str, sink_tokens: int, local_tokens: int, from_query: int, budget: int):
    """One layer's thumbnails (H, grid, grid) and its profiles' sums over the queries from
    ``from_query`` on ({name: (H,) float64}), a chunk of at most ``budget`` scores at a time.

    Each chunk's scores are exponentiated in place (e = exp(s - row max), 0 where masked) and then
    read twice more, where a softmax by hand reads and writes them several times:
    - one product e @ [1, j, j < sink] (and e @ k when the scores are q·k) gives each row's
      normaliser z, its mean key position and its mass on the sinks, and with it the entropy:
      -sum p log p = log z + max - sum e s / z, with sum e s = q · (e @ k);
    - the pass that finds each row's max score keeps it per tile of columns: the max pool is
      exp(that - row max) / z (the mean pool sums e over each tile in one more pass);
    rows are pooled into tile rows by index, so a tile row may span chunks."""
    dev = qk.q.device
    n, H = qk.seq_len, qk.n_q_heads
    grid = math.ceil(n / tile)
    q = qk.q.to(torch.float32)  # (H, seq, d)
    d = q.shape[-1]
    sums = torch.zeros(H, grid, grid, device=dev)  # the tiles' max or sum of p
    acc = {k: torch.zeros(H, device=dev, dtype=torch.float64) for k in ("sink", "local", "ent", "nent", "dist")}
    linear = not qk.softcap  # scores are q·k: the entropy's sum e s comes from e @ k
    G = qk.n_kv_heads
    for r0, r1 in _chunks([(0, n, _rows_per_chunk(H, n, tile, budget, whole_tiles=False))]):
        C = r1 - r0
        s = _chunk_scores(qk, q, None, r0, r1)  # (H, C, r1)
        if pool == "max":  # the tiles' max score gives the row's: one pass for both
            tiles = _tile_reduce(s, tile, pool)  # (H, C, cols)
            m = tiles.amax(-1, keepdim=True)  # every row sees at least its own key
            tiles = tiles.sub_(m).exp_()  # the tiles' max of e
        else:
            m = s.amax(-1, keepdim=True)
        e = s.sub_(m).exp_()
        if pool == "mean":
            tiles = _tile_reduce(e, tile, pool)  # the tiles' sum of e
        j = torch.arange(r1, device=dev, dtype=torch.float32)
        cols = torch.stack([torch.ones_like(j), j, (j < sink_tokens).float()], -1)  # (r1, 3)
        if linear:
            k = qk.k[:, :r1].to(dev, torch.float32)  # (G, r1, d)
            rhs = torch.cat([cols.expand(G, -1, -1), k], -1)  # (G, r1, 3 + d)
            out = torch.matmul(e.view(G, (H // G) * C, r1), rhs).view(H, C, 3 + d)
            es = torch.linalg.vecdot(out[..., 3:], q[:, r0:r1]) * qk.scaling  # sum_j e s
            t_sum = es - m[..., 0] * out[..., 0]  # sum_j e (s - max)
        else:
            out = torch.matmul(e.view(H * C, r1), cols).view(H, C, 3)
            t_sum = torch.special.xlogy(e, e).sum(-1)  # e log e = e (s - max); 0 where masked
        z = out[..., 0]  # (H, C)
        tiles = tiles / z[..., None]  # (H, C, cols): the tiles' max or sum of p
        rows = (torch.arange(r0, r1, device=dev) // tile)[None, :, None].expand(H, C, tiles.shape[-1])
        # into each row's tile row; p >= 0 and the sums start at 0
        sums[..., : tiles.shape[-1]].scatter_reduce_(1, rows, tiles, "amax" if pool == "max" else "sum")
        lo = max(from_query, r0)
        if lo >= r1:
            continue
        sel = slice(lo - r0, None)
        zs = z[:, sel]
        pos = torch.arange(lo, r1, device=dev, dtype=torch.float32)  # (C',)
        ent = torch.log(zs) - t_sum[:, sel] / zs  # (H, C')
        acc["ent"] += ent.sum(-1)
        acc["nent"] += (ent / torch.log(pos + 1).clamp(min=1e-9)).sum(-1)
        acc["sink"] += (out[:, sel, 2] / zs).sum(-1)
        acc["dist"] += (pos[None] - out[:, sel, 1] / zs).sum(-1)
        back = pos.long()[:, None] - torch.arange(local_tokens, device=dev)[None, :]  # (C', local) key positions
        near = e[:, sel].gather(-1, back.clamp(min=0).expand(H, -1, -1))  # (H, C', local)
        acc["local"] += ((near * (back >= 0)).sum(-1) / zs).sum(-1)
    count = _tile_counts(n, tile, qk.sliding_window, dev)
    thumbs = sums if pool == "max" else sums / count.clamp(min=1)
    return thumbs.masked_fill(count[None] == 0, float("nan")), acc


def overview(
    model,
    ids,
    *,
    cells: int = 32,
    pool: str = "max",
    sink_tokens: int = 4,
    local_tokens: int = 16,
    prompt_len: int | None = None,
    keep_qk_bytes: int = 0,
    chunk_elements: int | None = None,
) -> Overview:
    """Thumbnails (``cells`` x ``cells`` tiles) and profiles of every layer and head from one
    forward pass of ``ids``. Each layer's attention is computed inside its hook a chunk of queries
    at a time and dropped; the layer's q/k are kept while their total stays within
    ``keep_qk_bytes`` (0: keep none). A chunk holds at most ``chunk_elements`` scores (None: 16M
    on the CPU, 256M on a GPU); a tile row larger than that spans chunks (``_layer_overview``)."""
    _check_pool(pool)
    if sink_tokens < 1 or local_tokens < 1:
        raise CaptureError("sink_tokens and local_tokens must be at least 1.")
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    n = int(np.asarray(ids).size) if not isinstance(ids, torch.Tensor) else int(ids.numel())
    tile = tile_size(n, cells)
    grid = math.ceil(n / tile)
    from_query = min(max(sink_tokens, local_tokens), n // 2)
    thumbs = np.full((n_layers, n_heads, grid, grid), np.nan, dtype=np.float32)
    stats = {k: np.zeros((n_layers, n_heads)) for k in ("sink", "local", "ent", "nent", "dist")}
    kept: dict[int, LayerQK] = {}
    kept_bytes = 0

    def on_layer(layer: int, qk: LayerQK):
        nonlocal kept_bytes
        qk.prompt_len = prompt_len
        dev = qk.q.device
        budget = chunk_elements or (CUDA_CHUNK_ELEMENTS if dev.type == "cuda" else DEFAULT_CHUNK_ELEMENTS)
        layer_thumbs, acc = _layer_overview(qk, tile, pool, sink_tokens, local_tokens, from_query, budget)
        thumbs[layer] = layer_thumbs.cpu().numpy()  # one transfer per layer
        count = max(1, n - from_query)
        for k in stats:
            stats[k][layer] = (acc[k] / count).cpu().numpy()
        if kept_bytes + qk.nbytes() <= keep_qk_bytes:
            kept[layer] = qk
            kept_bytes += qk.nbytes()

    _run_with_hooks(model, ids, range(n_layers), on_layer)
    profiles = HeadProfiles(
        sink_mass=stats["sink"].astype(np.float32), local_mass=stats["local"].astype(np.float32),
        entropy=stats["ent"].astype(np.float32), norm_entropy=stats["nent"].astype(np.float32),
        mean_distance=stats["dist"].astype(np.float32),
        sink_tokens=sink_tokens, local_tokens=local_tokens, from_query=from_query, n_kv_heads=n_kv,
    )
    return Overview(
        thumbs=thumbs, tile=tile, pool=pool, seq_len=n, prompt_len=n if prompt_len is None else prompt_len,
        n_kv_heads=n_kv, profiles=profiles, qk=kept,
    )
