"""A plain sliding window: the most recent tokens only."""

from dataclasses import dataclass

import torch

from kvviz.policies.base import BudgetSelector, Selection


@dataclass
class Window(BudgetSelector):
    name = "window"
    family = "eviction"
    paper = "Beltagy et al., 2020. Longformer (local attention); the baseline of Xiao et al., 2023"
    graph_safe = True
    summary = """Keeps the `budget` most recent tokens and evicts everything older, including the
    first tokens. StreamingLLM showed that dropping those first tokens (the attention sinks)
    breaks the model: compare with streaming_llm."""

    def step(self, layer, ctx):
        if ctx.budget is None or layer.n <= ctx.budget:
            return None
        # entries are appended in position order, so the newest are the last ones
        keep = torch.arange(layer.n - ctx.budget, layer.n, device=layer.keys.device)
        return Selection(keep=keep.expand(layer.kv_heads, -1), scores=layer.positions.float())
