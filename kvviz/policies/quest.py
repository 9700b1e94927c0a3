"""Quest: per page of keys the element-wise min and max; each step reads the pages whose bound is highest."""

from dataclasses import dataclass

import torch

from kvviz.policies.params import param
from kvviz.policies.selector import Retriever


def page_bounds(queries: torch.Tensor, keys: torch.Tensor, page_size: int) -> torch.Tensor:
    """Quest's upper bound of each page's attention logit: sum over dims of max(q*kmax, q*kmin).

    queries (kv_heads, group, d) the step's query heads; keys (kv_heads, n, d). Returns
    (kv_heads, group, pages) float32; the last page may be partial."""
    kv_heads, n, d = keys.shape
    n_pages = -(-n // page_size)
    pad = n_pages * page_size - n  # a partial last page repeats its last key: its min and max stay
    k = torch.cat([keys, keys[:, -1:].expand(-1, pad, -1)], dim=1).float().view(kv_heads, n_pages, page_size, d)
    kmax, kmin = k.amax(dim=2), k.amin(dim=2)  # (kv_heads, pages, d)
    q = queries.float()[:, :, None, :]  # (kv_heads, group, 1, d)
    return torch.maximum(q * kmax[:, None], q * kmin[:, None]).sum(dim=-1)


@dataclass
class Quest(Retriever):
    name = "quest"
    paper = "Tang et al., 2024. Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference"
    paper_url = "https://arxiv.org/abs/2406.10774"
    summary = """Retrieval, not eviction: the cache keeps every entry and, per page of
    `page_size` consecutive entries, the element-wise minimum and maximum of its keys (the
    summary). At each decode step the query bounds every page's score from above,
    sum over dims of max(q x max, q x min), as in the authors' code (mit-han-lab/Quest), and the
    attention reads the highest-bound pages, read_budget // page_size of them and at least 3 (as
    the authors' evaluation code). As in the paper, the first `full_layers` layers read
    everything. Differs from Quest: the newest page (the token itself) is always read; kvviz's
    model shares KV heads between query heads (GQA), so a KV head reads one set of pages, chosen
    by the sum of its query heads' bounds (the authors' code repeats the KV heads and lets every
    query head choose its own pages); and pages are counted over the entries held, which after an eviction
    policy are no longer consecutive tokens."""

    page_size: int = param(16, "Entries per page; each page keeps the min and max of its keys.", min=1, max=4096)
    full_layers: int = param(2, "First layers that read every entry (Quest skips the first two).", min=0, max=1000)

    def read(self, layer, ctx):
        if not self.chooses(layer, ctx):
            return None
        if layer.layer_idx < self.full_layers or self.read_budget >= layer.n:
            return self.read_all(layer)
        n, size = layer.n, self.page_size
        q = layer.queries[:, -1].reshape(layer.kv_heads, -1, layer.keys.shape[-1])  # (kv_heads, group, d)
        bound = page_bounds(q, layer.keys, size).sum(dim=1)  # (kv_heads, pages)
        bound[:, -1] = float("inf")  # the newest page holds the token itself
        # at least 3 pages, as the authors' evaluation code (evaluation/quest_attention.py)
        pages = bound.topk(min(max(self.read_budget // size, 3), bound.shape[1]), dim=-1).indices  # (kv_heads, p)
        entries = (pages[..., None] * size + torch.arange(size, device=pages.device)).flatten(1).sort(dim=-1).values
        # the newest page is always read, and only it can run past n: every head reads as many
        return entries[:, : entries.shape[1] - (-(-n // size) * size - n)]

    def summary_bytes(self, kv_heads, n, head_dim):
        return 2 * kv_heads * -(-n // self.page_size) * head_dim * 2  # min and max per page, 16-bit
