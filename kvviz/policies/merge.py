"""Merging: evict like H2O, but fold each evicted entry into its most similar kept entry."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvviz.i18n import N_
from kvviz.policies.selector import Selection
from kvviz.policies.h2o import H2O


def evicted_indices(keep: torch.Tensor, n: int) -> torch.Tensor:
    """The complement of ``keep`` (kv_heads, k) in range(n): (kv_heads, n - k), ascending."""
    gone = torch.ones(keep.shape[0], n, dtype=torch.int8, device=keep.device).scatter_(1, keep, 0)
    return gone.argsort(dim=-1, descending=True, stable=True)[:, : n - keep.shape[1]]


def onto(target: torch.Tensor, k: int) -> torch.Tensor:
    """(kv_heads, e, k) float32, 1 where evicted entry i merges into kept entry j. Sums over it are
    matrix products and reductions, which add in a fixed order: a scatter-add's atomic adds on CUDA
    do not, and their rounding would change the run from one time to the next."""
    return (target.unsqueeze(-1) == torch.arange(k, device=target.device)).float()


def merge_into(kept: torch.Tensor, gone: torch.Tensor, target: torch.Tensor, w_kept: torch.Tensor, w_gone: torch.Tensor) -> torch.Tensor:
    """Attention-weighted average of each kept vector with the evicted vectors merged into it.

    kept (kv_heads, k, d), gone (kv_heads, e, d), target (kv_heads, e) index into k,
    w_kept (kv_heads, k), w_gone (kv_heads, e) -> (kv_heads, k, d) float32.
    """
    m = onto(target, kept.shape[1]).transpose(1, 2)  # (kv_heads, k, e)
    num = w_kept.unsqueeze(-1) * kept.float() + m @ (w_gone.unsqueeze(-1) * gone.float())
    den = (w_kept + (m * w_gone.unsqueeze(1)).sum(-1)).unsqueeze(-1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float32).tiny), kept.float())


@dataclass
class Merge(H2O):
    name = "merge"
    family = N_("merging")
    paper = "Zhang et al., 2024. CaM: Cache Merging for Memory-efficient LLMs Inference; Wan et al., 2024. D2O: Dynamic Discriminative Operations"
    paper_url = "https://proceedings.mlr.press/v235/zhang24n.html"
    summary = N_("""Chooses what leaves like H2O (accumulated attention, plus the `recent` newest
    tokens), but instead of dropping an evicted entry it merges it into the kept entry of the
    same KV head whose key is most similar (cosine): k' = (a_k k + a_e e) / (a_k + a_e), the
    same for the value, where a is the attention each has accumulated, and the kept entry's
    score becomes a_k + a_e. Several evicted entries may merge into one (a weighted average of
    all of them). The merged entry keeps the kept token's position for RoPE. For GQA the
    attention of a KV head is the mean over its query heads. CaM merges values only and D2O
    merges only above a similarity threshold; kvviz always merges both keys and values.""")

    def step(self, layer, ctx):
        sel = super().step(layer, ctx)
        if sel is None:
            return None
        acc = layer.stats["acc_attention"]  # (kv_heads, n) float32
        keep = sel.keep  # (kv_heads, k)
        gone = evicted_indices(keep, layer.n)  # (kv_heads, e)
        d = layer.keys.shape[-1]

        def take(t, idx):
            return t.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))

        k_keep, k_gone = take(layer.keys, keep), take(layer.keys, gone)
        similarity = F.normalize(k_gone.float(), dim=-1) @ F.normalize(k_keep.float(), dim=-1).transpose(1, 2)  # (kv_heads, e, k)
        target = similarity.argmax(dim=-1)  # (kv_heads, e) index into keep
        a_keep, a_gone = acc.gather(1, keep), acc.gather(1, gone)
        keys = merge_into(k_keep, k_gone, target, a_keep, a_gone).to(layer.keys.dtype)
        values = merge_into(take(layer.values, keep), take(layer.values, gone), target, a_keep, a_gone).to(layer.values.dtype)
        scores = acc.clone()  # what decided, before the merged attention is added
        inherited = (onto(target, keep.shape[1]) * a_gone.unsqueeze(-1)).sum(1)  # (kv_heads, k)
        acc.scatter_(1, keep, acc.gather(1, keep) + inherited)  # the kept entry inherits the attention
        return Selection(keep=keep, scores=scores, keys=keys, values=values)
