"""SnapKV: the prompt's last queries vote for the entries worth keeping, once, after prefill."""

from dataclasses import dataclass

import torch.nn.functional as F

from kvviz.policies.params import param
from kvviz.policies.selector import ScoredSelector
from kvviz.policies.scoring import attention_probs
from kvviz.record.trace import Protection


@dataclass
class SnapKV(ScoredSelector):
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

    def score(self, layer, ctx):
        window = self.protection(ctx.budget).recent
        probs = attention_probs(
            layer.queries[:, -window:], layer.keys, layer.query_positions[-window:], layer.positions
        )  # (kv_heads, window, n)
        votes = probs.sum(dim=1)  # (kv_heads, n)
        if self.kernel > 1:  # padding counts as zeros (avg) and keeps the length for odd kernels
            pool = F.avg_pool1d if self.pooling == "avg" else F.max_pool1d
            votes = pool(votes.unsqueeze(1), self.kernel, stride=1, padding=self.kernel // 2).squeeze(1)
            votes = votes[:, : layer.n]  # an even kernel gives one more
        return votes

    def protection(self, budget):
        # the observation window, at most the budget; the prompt is at least the budget long
        return Protection(recent=min(self.window, budget or 0), anchored_at_prompt=True)
