"""LFU: operating-system style eviction of the least frequently used entry."""

from dataclasses import dataclass

from kvviz.i18n import N_
from kvviz.policies.params import param
from kvviz.policies.lru import UsageSelector


@dataclass
class LFU(UsageSelector):
    name = "lfu"
    family = N_("eviction")
    paper = "Least Frequently Used replacement (OS caching); for KV caches cf. Liu et al., 2023, Scissorhands (pivotal-token counts)"
    paper_url = "https://arxiv.org/abs/2305.17118"
    summary = N_("""Counts how often each entry is "used", a use being a query whose attention to it
    is above `threshold`; once the budget is full the entry with the fewest uses is evicted
    (ties: the oldest entry first). Like Scissorhands, which counts how often a token is
    important, but without its history window. New tokens start with few uses, so `recent`
    protects the newest tokens (a new entry would otherwise be the first to go). For GQA a
    KV head's attention is the mean over its query heads. At prefill every prompt query counts,
    and the prompt is compressed to the budget at once.""")
    stat = "use_count"
    others = N_("used most often")

    recent: int = param(8, N_("Most recent tokens always kept, part of the budget, capped at it (new tokens have had little chance to be used)."), min=0, max=4096)

    def update(self, layer, stat):
        for used, _ in self.uses(layer):
            stat += used.sum(dim=1)
