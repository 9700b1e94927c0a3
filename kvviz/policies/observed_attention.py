"""Observed attention: keep the entries the prompt's queries attended to most, on average.

Follows kvpress's ``ObservedAttentionPress.score`` (NVIDIA/kvpress, commit 08a43bf,
kvpress/presses/observed_attention_press.py, lines 57-63): the attention weights of every prompt
query (eager attention) are summed over the queries, each entry's sum is divided by the number of
queries that can see it (n - i for entry i: causal), and the query heads of a KV head are averaged.
"""

from dataclasses import dataclass

from kvviz.i18n import N_
from kvviz.policies.scoring import accumulated_attention
from kvviz.policies.selector import ScoredSelector


@dataclass
class ObservedAttention(ScoredSelector):
    name = "observed_attention"
    family = N_("eviction")
    paper = "Zhang et al., 2023. H2O: Heavy-Hitter Oracle for Efficient Generative Inference of LLMs (kvpress's ObservedAttentionPress)"
    paper_url = "https://arxiv.org/abs/2306.14048"
    summary = N_("""At the end of prefill, every entry's score is the attention it received from
    every prompt query, averaged over the queries that can see it: entry i of an n-token prompt
    is seen by the n - i queries from i on, so the sum is divided by n - i (a plain sum would
    favour the first tokens, which every query sees). For GQA a KV head's score is the mean over
    its query heads. Each KV head keeps its top `budget` entries, with no protected tokens, once;
    generated tokens are never evicted. This is kvpress's ObservedAttentionPress, an H2O-like
    rule applied to the prompt only; kvviz computes the attention from the captured queries
    instead of asking the model for eager attention weights. Unlike `h2o` it keeps no recent
    window, and it divides by the number of queries, so the last tokens (seen by few queries,
    each giving them a large weight) rank high.""")
    needs_queries = True
    acts_at_decode = False
    others = N_("with the highest attention per query that sees them")

    def score(self, layer, ctx):
        queries, query_positions = layer.captured_queries()
        total = accumulated_attention(queries, layer.keys, query_positions, layer.positions)  # (kv_heads, n)
        seen_by = (ctx.prompt_len - layer.positions).clamp(min=1)  # (kv_heads, n): queries at or after each entry
        return total / seen_by
