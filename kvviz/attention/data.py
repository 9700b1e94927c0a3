"""What the attention maps are, as plain numpy: one head's view of the attention matrix, the
profiles of every head, and the overview of a whole model; pooling of a matrix held in memory.

``kvviz.attention.maps`` computes these from a model's queries and keys (torch); charts and pages
read them from here, so that drawing a map never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from kvviz.model.capture import LayerQK

POOLS = ("max", "mean")


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class AttentionView:
    """One layer and query head: a window of the attention matrix, pooled into tiles, and the
    per-position statistics of the whole matrix.

    Tile (r, c) covers queries ``q_start + r*tile .. +tile`` and keys ``k_start + c*tile .. +tile``
    (the last row/column of tiles may be shorter). Pooling looks only at the cells a query can
    see (causal mask); a tile with no such cell is NaN.
    """

    layer: int
    head: int
    kv_head: int
    values: np.ndarray  # (n_rows, n_cols) float32 pooled attention; NaN = wholly masked
    q_start: int
    q_stop: int
    k_start: int
    k_stop: int
    tile: int  # tokens per tile side; 1 = full resolution
    pool: str  # "max" or "mean"
    seq_len: int
    prompt_len: int
    key_score: np.ndarray  # (seq,) attention each key receives, summed over all queries (H2O score)
    row_entropy: np.ndarray  # (seq,) entropy of each query's attention row, nats
    evicted: np.ndarray | None = None  # (seq,) bool, keys marked evicted
    evicted_mass: np.ndarray | None = None  # (seq,) each query's attention on evicted keys

    @property
    def row_starts(self) -> np.ndarray:
        """(n_rows,) first query position of each tile row."""
        return self.q_start + self.tile * np.arange(self.values.shape[0])

    @property
    def col_starts(self) -> np.ndarray:
        """(n_cols,) first key position of each tile column."""
        return self.k_start + self.tile * np.arange(self.values.shape[1])

    @classmethod
    def from_matrix(
        cls,
        attn: np.ndarray,
        *,
        q_range: tuple[int, int] | None = None,
        k_range: tuple[int, int] | None = None,
        max_cells: int = 128,
        pool: str = "max",
        prompt_len: int | None = None,
        evicted: np.ndarray | None = None,
        layer: int = 0,
        head: int = 0,
        kv_head: int = 0,
    ) -> "AttentionView":
        """A view of a full (seq, seq) attention matrix held in memory (tests, small inputs)."""
        attn = np.asarray(attn, dtype=np.float64)
        n = attn.shape[0]
        (qa, qb), (ka, kb) = window_bounds(n, q_range, k_range)
        tile = tile_size(max(qb - qa, kb - ka), max_cells)
        values = pool_matrix(attn[qa:qb, ka:kb], tile, pool, q_start=qa, k_start=ka)
        causal = np.tril(np.ones((n, n), dtype=bool))
        p = np.where(causal, attn, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(1)
        ev = None if evicted is None else np.asarray(evicted, dtype=bool)
        return cls(
            layer=layer, head=head, kv_head=kv_head, values=values.astype(np.float32),
            q_start=qa, q_stop=qb, k_start=ka, k_stop=kb, tile=tile, pool=pool, seq_len=n,
            prompt_len=n if prompt_len is None else prompt_len,
            key_score=p.sum(0).astype(np.float32), row_entropy=ent.astype(np.float32),
            evicted=ev, evicted_mass=None if ev is None else (p * ev[None, :]).sum(1).astype(np.float32),
        )


@dataclass
class HeadProfiles:
    """Measured traits of every head, averaged over the queries at positions >= ``from_query``
    (earlier queries see too few keys for the traits to mean anything)."""

    sink_mass: np.ndarray  # (n_layers, n_q_heads) attention on the first ``sink_tokens`` keys
    local_mass: np.ndarray  # (n_layers, n_q_heads) attention on the last ``local_tokens`` keys (self included)
    entropy: np.ndarray  # (n_layers, n_q_heads) mean row entropy, nats
    norm_entropy: np.ndarray  # (n_layers, n_q_heads) mean of entropy / log(keys visible), 0..1
    mean_distance: np.ndarray  # (n_layers, n_q_heads) mean of sum_j p_ij (i - j), tokens
    sink_tokens: int
    local_tokens: int
    from_query: int
    n_kv_heads: int

    @property
    def n_layers(self) -> int:
        return self.sink_mass.shape[0]

    @property
    def n_q_heads(self) -> int:
        return self.sink_mass.shape[1]

    def rows(self) -> list[dict]:
        """One dict per (layer, head), for tables."""
        g = self.n_q_heads // self.n_kv_heads
        out = []
        for layer in range(self.n_layers):
            for head in range(self.n_q_heads):
                out.append(
                    {
                        "layer": layer,
                        "head": head,
                        "kv_head": head // g,
                        "sink_mass": float(self.sink_mass[layer, head]),
                        "local_mass": float(self.local_mass[layer, head]),
                        "entropy": float(self.entropy[layer, head]),
                        "norm_entropy": float(self.norm_entropy[layer, head]),
                        "mean_distance": float(self.mean_distance[layer, head]),
                    }
                )
        return out


@dataclass
class Overview:
    """Every layer and head at a glance: pooled thumbnails and head profiles."""

    thumbs: np.ndarray  # (n_layers, n_q_heads, cells, cells) float32 pooled attention; NaN = masked tile
    tile: int  # tokens per thumbnail cell side
    pool: str
    seq_len: int
    prompt_len: int
    n_kv_heads: int
    profiles: HeadProfiles
    qk: dict[int, LayerQK] = field(default_factory=dict)  # layers whose q/k were kept (kvviz.model.capture.LayerQK)

    @property
    def n_layers(self) -> int:
        return self.thumbs.shape[0]

    @property
    def n_q_heads(self) -> int:
        return self.thumbs.shape[1]


# ---------------------------------------------------------------------------------------------
# pooling (reference implementation on a matrix held in memory)


def tile_size(n_tokens: int, max_cells: int) -> int:
    """Smallest tile side that shows ``n_tokens`` in at most ``max_cells`` cells."""
    if max_cells < 1:
        raise ValueError("max_cells must be at least 1.")
    return max(1, math.ceil(n_tokens / max_cells))


def pool_matrix(
    attn: np.ndarray, tile: int, pool: str = "max", *, q_start: int = 0, k_start: int = 0, window: int | None = None
) -> np.ndarray:
    """Pool a window of an attention matrix into ``tile`` x ``tile`` tiles.

    ``attn`` (rows, cols) holds queries ``q_start..`` and keys ``k_start..``. Only cells where the
    key is not after the query (and, with a sliding ``window``, among its last ``window`` keys)
    count; a tile with none is NaN. ``max``: the largest weight in
    the tile; ``mean``: the mean over the tile's visible cells.
    """
    check_pool(pool)
    attn = np.asarray(attn, dtype=np.float64)
    rows, cols = attn.shape
    qpos = q_start + np.arange(rows)[:, None]
    kpos = k_start + np.arange(cols)[None, :]
    visible = kpos <= qpos
    if window:
        visible &= kpos > qpos - window
    out = np.full((math.ceil(rows / tile), math.ceil(cols / tile)), np.nan)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            block = attn[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
            vis = visible[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
            if vis.any():
                out[r, c] = block[vis].max() if pool == "max" else block[vis].mean()
    return out


def check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}.")


def window_bounds(n: int, q_range, k_range) -> tuple[tuple[int, int], tuple[int, int]]:
    qa, qb = (0, n) if q_range is None else (int(q_range[0]), int(q_range[1]))
    ka, kb = (0, n) if k_range is None else (int(k_range[0]), int(k_range[1]))
    for a, b, what in ((qa, qb, "query"), (ka, kb, "key")):
        if not (0 <= a < b <= n):
            raise ValueError(f"The {what} window {a}..{b} is not inside the sequence of {n} tokens.")
    return (qa, qb), (ka, kb)
