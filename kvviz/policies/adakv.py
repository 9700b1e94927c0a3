"""AdaKV: head-wise adaptive budgets, the layer's entries chosen by a top-k over all its heads.

Follows ``AdaKVPress`` of NVIDIA/kvpress (commit 002ac9d, kvpress/presses/adakv_press.py,
``compress``, lines 32-55).
"""

from dataclasses import dataclass, field

import torch

from kvviz.i18n import N_
from kvviz.policies.chunkkv import folded_scores, inner_scorer
from kvviz.policies.params import param
from kvviz.policies.selector import ScoredSelector, Selection
from kvviz.policies.scoring import keep_top


def adaptive_budgets(scores: torch.Tensor, budget: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (kv_heads, n) -> (ranked (kv_heads, n), per-head budgets (kv_heads,)): each head's
    top int(budget × alpha) raised above every score, then the layer's kv_heads × budget highest
    over all heads kept; a head's budget is how many of them fall in it."""
    kv_heads, n = scores.shape
    ranked = scores.float().clone()
    safe = int(budget * alpha)
    if safe:
        ranked.scatter_(1, ranked.topk(safe, dim=-1).indices, torch.finfo(ranked.dtype).max)
    chosen = ranked.flatten().topk(kv_heads * budget).indices  # over all heads
    counts = torch.bincount(chosen // n, minlength=kv_heads)  # (kv_heads,)
    return ranked, counts


@dataclass
class AdaKV(ScoredSelector):
    name = "adakv"
    family = N_("eviction")
    paper = "Feng et al., 2024. Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM Inference"
    paper_url = "https://arxiv.org/abs/2407.11550"
    summary = N_("""Head-wise budgets: at the end of prefill, another registered scorer (`scorer`,
    with its default parameters; its protected entries count with the layer's highest score)
    scores every entry, each KV head's top `alpha_safeguard` × budget entries are guaranteed,
    and the layer's budget × KV heads entries are the highest scores over all heads together, so
    a head with sharp scores gives room to a head with flat ones. As kvpress's AdaKVPress, which
    masks the pruned entries in attention. kvviz holds the same number of entries in every KV
    head (its tensors are rectangular): each head keeps its adaptive set and is topped up with
    its next-best entries up to the largest head budget, and attention reads those too. The
    bytes held are KV heads × the largest head budget, more than the budget (the Live policy
    page's bytes say how much); the adaptive budgets of the last run are in the policy's
    `head_budgets` (layer -> one count per KV head). Generated tokens are never evicted.""")
    needs_queries = True  # the inner scorer may need them
    acts_at_decode = False
    wraps_scorer = True

    scorer: str = param("snapkv", N_("The registered scored selector whose scores are ranked over all heads (its defaults)."), type=str)
    alpha_safeguard: float = param(0.2, N_("Share of the budget every KV head is guaranteed."), min=0.0, max=1.0)
    inner: ScoredSelector | None = field(default=None, repr=False, compare=False)
    head_budgets: dict = field(default_factory=dict, repr=False, compare=False)

    def validate(self) -> None:
        super().validate()
        self.inner = inner_scorer(self.name, self.scorer)

    def scorer_policy(self) -> ScoredSelector:
        if self.inner is None:
            self.inner = inner_scorer(self.name, self.scorer)
        return self.inner

    def protection(self, budget):
        # the inner scorer's protected entries score the layer's highest: every head keeps them
        return self.scorer_policy().protection(budget)

    def step(self, layer, ctx):
        if not ctx.is_prefill or ctx.budget is None or layer.n <= ctx.budget:
            return None
        scores = folded_scores(self.scorer_policy(), layer, ctx)  # (kv_heads, n)
        ranked, counts = adaptive_budgets(scores, ctx.budget, self.alpha_safeguard)
        self.head_budgets[layer.layer_idx] = counts.tolist()
        # rectangular tensors: every head holds the largest head budget, its adaptive set first
        return Selection(keep=keep_top(ranked, int(counts.max())), scores=scores)
