"""TOVA: evict the entry the current query attends to least."""

from dataclasses import dataclass

from kvviz.i18n import N_
from kvviz.policies.params import param
from kvviz.policies.selector import ScoredSelector
from kvviz.policies.scoring import last_query_probs


@dataclass
class TOVA(ScoredSelector):
    name = "tova"
    family = N_("eviction")
    paper = "Oren et al., 2024. Transformers are Multi-State RNNs (TOVA: Token Omission Via Attention)"
    paper_url = "https://arxiv.org/abs/2401.06104"
    graph_safe = True
    summary = N_("""At every decode step, once the budget is full, evicts the entry with the lowest
    attention from the current query. As in the paper and the authors' code the score is
    averaged over all the layer's query heads, so every KV head keeps the same tokens (with
    `per_kv_head`, not the authors' rule, each KV head instead ranks by the mean of its own
    group of query heads). No history is kept: only the current query decides. As the authors'
    `TOVACache` (schwartz-lab-NLP/TOVA, src/tova_cache.py) does, kvviz compresses the prompt at
    once at the end of prefill, ranked by the attention of the last prompt query, then evicts
    one entry per decode step.""")
    needs_queries = True

    per_kv_head: bool = param(False, N_("Rank per KV head (mean of its query heads) instead of the paper's mean over all heads of the layer."))

    def score(self, layer, ctx):
        probs = last_query_probs(layer)  # (kv_heads, n): the current (or last prompt) query, mean over each group
        if not self.per_kv_head:  # every KV head holds the same entries: average over the layer
            probs = probs.mean(dim=0, keepdim=True).expand_as(probs)
        return probs
