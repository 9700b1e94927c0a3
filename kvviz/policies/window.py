"""A plain sliding window: the most recent tokens only."""

from dataclasses import dataclass

from kvviz.i18n import N_
from kvviz.policies.selector import ScoredSelector
from kvviz.record.trace import Protection


@dataclass
class Window(ScoredSelector):
    name = "window"
    family = N_("eviction")
    paper = "Beltagy et al., 2020. Longformer (local attention); the baseline of Xiao et al., 2023"
    paper_url = "https://arxiv.org/abs/2004.05150"
    graph_safe = True
    summary = N_("""Keeps the `budget` most recent tokens and evicts everything older, including the
    first tokens. StreamingLLM showed that dropping those first tokens (the attention sinks)
    breaks the model: compare with streaming_llm.""")

    def score(self, layer, ctx):
        return layer.positions.float()  # (kv_heads, n): the newest entries score highest

    def protection(self, budget):
        return Protection(recent=budget or 0)
