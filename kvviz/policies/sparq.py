"""SparQ: approximate scores from the query's largest components pick the entries each step reads."""

from dataclasses import dataclass

import torch

from kvviz.i18n import N_
from kvviz.policies.params import param
from kvviz.policies.selector import Retriever


def approximate_scores(queries: torch.Tensor, keys: torch.Tensor, r: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """SparQ's step 1: per query head, the r largest |q_i|, and softmax(q[i] . K[:, i] / tau) with
    tau = sqrt(d * |q[i]|_1 / |q|_1). queries (kv_heads, group, d); keys (kv_heads, n, d); valid
    (n,) bool, the slots that hold entries (the others get 0), None = all.
    Returns (kv_heads, group, n) float32."""
    q, k = queries.float(), keys.float()
    d = q.shape[-1]
    idx = q.abs().topk(min(r, d), dim=-1).indices  # (kv_heads, group, r)
    q_r = q.gather(-1, idx)
    k_r = k[:, None].expand(-1, q.shape[1], -1, -1).gather(-1, idx[:, :, None, :].expand(-1, -1, k.shape[1], -1))
    tau = (d * q_r.abs().sum(-1) / q.abs().sum(-1)).sqrt()  # (kv_heads, group)
    logits = torch.einsum("hgr,hgnr->hgn", q_r, k_r) / tau[..., None]
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    return logits.softmax(dim=-1)


@dataclass
class SparQ(Retriever):
    name = "sparq"
    graph_safe = True  # static shapes at a fixed capacity (Retriever.read_fixed), no host reads
    paper = "Ribar et al., 2024. SparQ Attention: Bandwidth-Efficient LLM Inference"
    paper_url = "https://arxiv.org/abs/2312.04985"
    summary = N_("""Retrieval, not eviction: the cache keeps every entry. At each decode step the
    query's `r` largest components (by magnitude) give approximate scores of every key, read
    from those `r` dimensions only, with the paper's temperature sqrt(d x |q_r|_1 / |q|_1); the
    attention reads the read_budget entries with the highest approximate scores. With
    mean_value (the paper's mean-value correction, on by default) each query head's output is
    alpha x the read attention + (1 - alpha) x the mean of all the KV head's held values, alpha
    being the approximate mass of the entries read (1 when all are read: the same as full).
    For GQA a KV head ranks its entries by the sum of its query heads' approximate scores (the
    paper ran one query per KV head); alpha is each query head's own.""")

    r: int = param(16, N_("Query components used for the approximate scores (of the head dimension)."), min=1, max=4096)
    mean_value: bool = param(True, N_("The paper's mean-value correction: mix the mean of all held values in by the approximate mass not read."))

    def scores(self, layer) -> torch.Tensor:
        """(kv_heads, group, n) float32: the step's approximate scores per query head (0 on
        slots that hold no entry), computed once per step: ranking and mixing share them."""
        if "sparq" not in layer.scratch:
            q = layer.captured_queries()[0][:, -1].reshape(layer.kv_heads, -1, layer.keys.shape[-1])  # (kv_heads, group, d)
            layer.scratch["sparq"] = approximate_scores(q, layer.keys, self.r, None if layer.length is None else layer.valid())
        return layer.scratch["sparq"]

    def rank(self, layer, ctx):
        return self.scores(layer).sum(dim=1)

    def mix(self, layer, ctx, read, reading=None):
        if not self.mean_value:
            return None
        if layer.length is None:
            if read.shape[1] >= layer.n:
                return None  # everything read: alpha = 1, nothing to mix
            v = layer.values.float().mean(dim=1)  # (kv_heads, d)
        else:  # a fixed-capacity layer: the mean of the entries held, alpha = 1 where all are read
            v = (layer.values.float() * layer.valid()[:, None]).sum(dim=1) / layer.length
        s = self.scores(layer)
        got = s.gather(-1, read[:, None].expand(-1, s.shape[1], -1))  # (kv_heads, group, k)
        if reading is None or layer.length is None:
            alpha = got.sum(-1)
        else:
            alpha = (got * reading[:, None]).sum(-1)
            alpha = torch.where((reading.sum(-1) >= layer.length)[:, None], 1.0, alpha)
        return alpha.reshape(-1), v
