"""H2O: heavy hitters by accumulated attention, plus a recent window."""

from dataclasses import dataclass

import torch

from kvviz.policies.params import param
from kvviz.policies.selector import ScoredSelector
from kvviz.policies.scoring import accumulated_attention, attention_probs
from kvviz.record.trace import Protection


@dataclass
class H2O(ScoredSelector):
    name = "h2o"
    family = "eviction"
    paper = "Zhang et al., 2023. H2O: Heavy-Hitter Oracle for Efficient Generative Inference of LLMs"
    graph_safe = True
    summary = """Each entry's score is the attention it has received, summed over every query so
    far (the prompt's queries at prefill, then each new token's). The cache keeps the
    `recent` newest tokens plus the highest-scoring others, and evicts one entry at every decode
    step once the budget is full. For GQA the score of a KV head is the mean over its query
    heads. kvviz compresses the prompt to the budget right after prefill (the paper's
    eviction during prefill gives the same kept set up to ties, at much higher cost)."""
    needs_queries = True

    recent: int = param(16, "Most recent tokens always kept (the paper's local window), part of the budget and at most half of it.", min=0)

    def observe(self, layer, ctx):
        acc = layer.stats.get("acc_attention")  # (kv_heads, n) float32
        if acc is None:
            acc = layer.stats["acc_attention"] = torch.zeros(layer.positions.shape, device=layer.keys.device)
        if ctx.is_prefill:
            acc += accumulated_attention(layer.queries, layer.keys, layer.query_positions, layer.positions)
        else:
            acc += attention_probs(layer.queries, layer.keys, layer.query_positions, layer.positions).sum(dim=1)

    def score(self, layer, ctx):
        return layer.stats["acc_attention"]

    def protection(self, budget):
        return Protection(recent=min(self.recent, budget // 2) if budget else 0)
