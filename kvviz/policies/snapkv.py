"""SnapKV: the prompt's last queries vote for the entries worth keeping, once, after prefill."""

from dataclasses import dataclass

import torch.nn.functional as F

from kvviz.policies.base import BudgetSelector, Selection, param
from kvviz.scoring import attention_probs, keep_top, recent_mask


@dataclass
class SnapKV(BudgetSelector):
    name = "snapkv"
    family = "eviction"
    paper = "Li et al., 2024. SnapKV: LLM Knows What You are Looking for Before Generation"
    summary = """At the end of prefill, the last `window` queries of the prompt (the observation
    window) score every earlier entry by the attention they give it, summed over the window;
    the scores are pooled along the sequence (`kernel`, avg or max) so neighbours of important
    tokens survive too. Each KV head keeps its own top entries plus the observation window.
    Generated tokens are never evicted (SnapKV compresses the prompt only). For GQA a KV head's
    score is the mean over its query heads."""
    needs_queries = True
    acts_at_decode = False

    window: int = param(32, "Observation window: the last prompt tokens whose queries vote (always kept).", min=1)
    kernel: int = param(7, "Pooling kernel size along the sequence (1 = no pooling).", min=1, max=63)
    pooling: str = param("avg", "How votes are pooled along the sequence.", choices=("avg", "max"))

    def step(self, layer, ctx):
        if not ctx.is_prefill or ctx.budget is None or layer.n <= ctx.budget:
            return None
        window = min(self.window, layer.queries.shape[1], ctx.budget)
        probs = attention_probs(
            layer.queries[:, -window:], layer.keys, layer.query_positions[-window:], layer.positions
        )  # (kv_heads, window, n)
        votes = probs.sum(dim=1)  # (kv_heads, n)
        if self.kernel > 1:
            pool = F.avg_pool1d if self.pooling == "avg" else F.max_pool1d
            votes = pool(votes.unsqueeze(1), self.kernel, stride=1, padding=self.kernel // 2).squeeze(1)
            if self.pooling == "avg":  # avg_pool1d counts padding as zeros; keep the same shape
                votes = votes[:, : layer.n]
            votes = votes[:, : layer.n]
        protect = recent_mask(layer.positions, window)
        return Selection(keep=keep_top(votes, ctx.budget, protect), scores=votes)
