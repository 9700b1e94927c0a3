"""H2O: heavy hitters by accumulated attention, plus a recent window."""

from dataclasses import dataclass

import torch

from kvviz.i18n import N_
from kvviz.policies.params import param
from kvviz.policies.selector import ScoredSelector
from kvviz.policies.scoring import accumulated_attention, attention_probs, last_query_probs
from kvviz.record.trace import Protection


@dataclass
class H2O(ScoredSelector):
    name = "h2o"
    family = N_("eviction")
    paper = "Zhang et al., 2023. H2O: Heavy-Hitter Oracle for Efficient Generative Inference of LLMs"
    paper_url = "https://arxiv.org/abs/2306.14048"
    graph_safe = True
    summary = N_("""Each entry's score is the attention it has received, summed over every query so
    far (the prompt's queries at prefill, then each new token's). The cache keeps the `recent`
    newest tokens plus the budget - `recent` highest-scoring others (the heavy hitters): any
    split of the budget, as the authors' code sets its heavy and recent sizes independently.
    Once the budget is full it evicts one entry at every decode step. For GQA the score of a KV
    head is the mean over its query heads. kvviz compresses the prompt to the budget once,
    right after prefill, with the attention of every prompt query, as the authors' released
    cache (`H2OKVCache_LayerWise`) does: the same kept entries at every step. The paper's
    algorithm evicts token by token while reading the prompt, so that evicted entries stop
    collecting attention; that reading keeps a different set (not only in ties).""")
    needs_queries = True
    protection_params = {"recent": "recent"}
    others = N_("with the highest accumulated attention (heavy hitters)")

    recent: int = param(8, N_("Most recent tokens always kept (the paper's local window), part of the budget: up to all of it; the heavy hitters take the rest (budget - recent)."), min=0)

    def observe(self, layer, ctx):
        acc = layer.stats.get("acc_attention")  # (kv_heads, n) float32
        if acc is None:
            acc = layer.stats["acc_attention"] = torch.zeros(layer.positions.shape, device=layer.keys.device)
        queries, query_positions = layer.captured_queries()
        if ctx.is_prefill:
            acc += accumulated_attention(queries, layer.keys, query_positions, layer.positions)
        elif queries.shape[1] == 1:  # a decode step: the new token's attention
            acc += last_query_probs(layer)
        else:
            acc += attention_probs(queries, layer.keys, query_positions, layer.positions).sum(dim=1)

    def score(self, layer, ctx):
        return layer.stats["acc_attention"]

    def protection(self, budget):
        return Protection(recent=min(self.recent, budget) if budget else 0)
