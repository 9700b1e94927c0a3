"""StreamingLLM: the first tokens (attention sinks) plus a recent window."""

from dataclasses import dataclass

from kvviz.i18n import N_, _
from kvviz.policies.params import PolicyError, param
from kvviz.policies.selector import ScoredSelector
from kvviz.record.trace import Protection


@dataclass
class StreamingLLM(ScoredSelector):
    name = "streaming_llm"
    family = N_("eviction")
    paper = "Xiao et al., 2023. Efficient Streaming Language Models with Attention Sinks"
    paper_url = "https://arxiv.org/abs/2309.17453"
    graph_safe = True
    summary = N_("""Keeps the `n_sink` first tokens, which draw a large share of attention whatever
    they say (attention sinks), plus the most recent tokens: budget = n_sink + window. Evicts
    the oldest token after the sinks at every step once the budget is full. Every KV head keeps
    the same tokens, so no GQA aggregation is involved. The kept entries are those of the
    authors' `StartRecentKVCache` (mit-han-lab/streaming-llm, streaming_llm/kv_cache.py) after
    the prompt and every step. On purpose, kvviz keeps each entry's true position for RoPE; the
    authors' Llama attention (streaming_llm/pos_shift/modify_llama.py) renumbers the cached keys
    0..n-1 at every step (positions within the cache), so once entries are evicted its
    attention, not what it keeps, differs from kvviz's.""")

    n_sink: int = param(4, N_("First tokens always kept (attention sinks), part of the budget."), min=0, max=1024)

    protection_params = {"n_sink": "n_sink"}  # the window is what the budget leaves

    def check_budget(self, budget: int) -> None:
        if budget <= self.n_sink:
            raise PolicyError(_("streaming_llm: budget {budget} leaves no recent window after {n_sink} sink tokens;"
                                " raise the budget or lower n_sink.").format(budget=budget, n_sink=self.n_sink))

    def score(self, layer, ctx):
        return layer.positions.float()  # (kv_heads, n): the newest entries score highest

    def protection(self, budget):
        return Protection(n_sink=self.n_sink, recent=budget - self.n_sink if budget else 0)
