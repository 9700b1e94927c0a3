"""SnapKV: the prompt's last queries vote for the entries worth keeping, once, after prefill.

Follows ``SnapKVCluster.update_kv`` of the authors' code (FasterDecoding/SnapKV, commit
e216ddc, snapkv/monkeypatch/snapkv_utils.py, lines 38-70) and its KV-head form in
Zefan-Cai/KVCache-Factory (commit c97f9d7, pyramidkv/pyramidkv_utils.py, lines 273-320): the
window's attention to the entries before it is summed over the window, averaged over a KV head's
query heads, pooled along the sequence (zero padding), and the top ``budget - window`` of those
entries are kept with the whole window.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvviz.i18n import N_
from kvviz.policies.params import param
from kvviz.policies.selector import ScoredSelector
from kvviz.policies.scoring import attention_probs
from kvviz.record.trace import Protection


@dataclass
class SnapKV(ScoredSelector):
    name = "snapkv"
    family = N_("eviction")
    paper_url = "https://arxiv.org/abs/2404.14469"
    paper = "Li et al., 2024. SnapKV: LLM Knows What You are Looking for Before Generation"
    summary = N_("""At the end of prefill, the last `window` queries of the prompt (the observation
    window) score every earlier entry by the attention they give it, summed over the window;
    the scores of the entries before the window are pooled along the sequence (`kernel`, avg or
    max, zero padding) so neighbours of important tokens survive too. Each KV head keeps its own
    top entries plus the whole observation window. Generated tokens are never evicted (SnapKV
    compresses the prompt only). For GQA a KV head's score is the mean over its query heads, as
    in KVCache-Factory's KV-head path. As in the authors' code, only the entries before the
    window are pooled (the window's own votes never reach its neighbours). Differs from the
    released code on purpose in one place: a budget at or below `window` keeps the newest
    `budget` tokens (the released code refuses it).""")
    needs_queries = True
    acts_at_decode = False

    window: int = param(32, N_("Observation window: the last prompt tokens whose queries vote (always kept)."), min=1)
    kernel: int = param(7, N_("Pooling kernel size along the sequence (1 = no pooling)."), min=1, max=63)
    pooling: str = param("avg", N_("How votes are pooled along the sequence."), choices=("avg", "max"))

    def score(self, layer, ctx):
        window = self.protection(ctx.budget).recent
        queries, query_positions = layer.captured_queries()
        probs = attention_probs(
            queries[:, -window:], layer.keys, query_positions[-window:], layer.positions
        )  # (kv_heads, window, n)
        votes = probs.sum(dim=1)  # (kv_heads, n)
        return torch.cat([self.pool(votes[:, :-window]), votes[:, -window:]], dim=1)

    def pool(self, votes):
        """(kv_heads, m) -> (kv_heads, m): the votes of the entries before the window, pooled;
        padding counts as zeros (avg) and keeps the length for odd kernels."""
        if self.kernel <= 1:
            return votes
        pool = F.avg_pool1d if self.pooling == "avg" else F.max_pool1d
        pooled = pool(votes.unsqueeze(1), self.kernel, stride=1, padding=self.kernel // 2).squeeze(1)
        return pooled[:, : votes.shape[1]]  # an even kernel gives one more

    def protection(self, budget):
        # the observation window, at most the budget; the prompt is at least the budget long
        return Protection(recent=min(self.window, budget or 0), anchored_at_prompt=True)
