"""LRU: operating-system style eviction of the least recently used entry."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvviz.i18n import N_
from kvviz.policies.params import param
from kvviz.policies.selector import ScoredSelector
from kvviz.policies.scoring import attention_probs
from kvviz.record.trace import Protection


def keep_highest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (kv_heads, k), ascending, of the k highest scores per KV head; among equal
    scores the entries of lowest index (oldest, since entries are held in position order)
    are evicted first (scores of whole numbers compare exactly)."""
    n = scores.shape[-1]
    order = scores.argsort(dim=-1, stable=True)  # ascending; ties keep index order
    return order[:, n - min(k, n) :].sort(dim=-1).values


@dataclass
class UsageSelector(ScoredSelector):
    """Shared mechanics of LRU and LFU: a "use" of an entry is a query whose attention to it
    (mean over the KV head's query heads) is above ``threshold``."""

    stat: ClassVar[str] = ""
    needs_queries = True
    graph_safe = True
    protection_params = {"recent": "recent"}

    threshold: float = param(0.02, N_("Attention probability above which a query counts as a use of an entry."), min=0.0, max=1.0)
    recent: int = param(0, N_("Most recent tokens always kept, part of the budget (capped at the budget)."), min=0, max=4096)

    def uses(self, layer, chunk: int = 256):
        """Yields (used (kv_heads, q, n) bool, query positions (q,)) for chunks of the step's queries."""
        for start in range(0, layer.queries.shape[1], chunk):
            qpos = layer.query_positions[start : start + chunk]
            probs = attention_probs(layer.queries[:, start : start + chunk], layer.keys, qpos, layer.positions)
            yield probs > self.threshold, qpos

    def update(self, layer, stat: torch.Tensor) -> None:
        raise NotImplementedError

    def observe(self, layer, ctx):
        stat = layer.stats.get(self.stat)  # (kv_heads, n) long
        if stat is None:
            stat = layer.stats[self.stat] = torch.zeros_like(layer.positions)
        self.update(layer, stat)

    def score(self, layer, ctx):
        return layer.stats[self.stat].float()  # exact: positions and counts stay far below 2**24

    def choose(self, scores, budget, protect):
        return keep_highest(scores.masked_fill(protect, float("inf")), budget)

    def protection(self, budget):
        return Protection(recent=min(self.recent, budget or 0))


@dataclass
class LRU(UsageSelector):
    name = "lru"
    family = N_("eviction")
    paper = "Least Recently Used page replacement (Mattson et al., 1970); for KV caches cf. Liu et al., 2023, Scissorhands"
    paper_url = "https://arxiv.org/abs/2305.17118"
    summary = N_("""Operating-system page replacement applied to the cache: an entry is "used" when
    a query's attention to it is above `threshold`, and entering the cache counts as a use.
    Each entry remembers the position of the query that last used it; once the budget is full
    the least recently used entry is evicted (ties: the oldest entry first). For GQA a KV head's
    attention is the mean over its query heads. At prefill every prompt query counts, and the
    prompt is compressed to the budget at once.""")
    stat = "last_use"
    others = N_("used most recently")

    def update(self, layer, stat):
        torch.maximum(stat, layer.positions, out=stat)  # entering the cache is a use
        for used, qpos in self.uses(layer):
            when = torch.where(used, qpos[None, :, None], -1).amax(dim=1)  # (kv_heads, n)
            torch.maximum(stat, when, out=stat)
