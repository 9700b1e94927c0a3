"""Quest: per page of keys the element-wise min and max; each step reads the pages whose bound is highest."""

from dataclasses import dataclass

import torch

from kvviz.i18n import N_
from kvviz.policies.params import param
from kvviz.policies.selector import Retriever


def page_bounds(queries: torch.Tensor, keys: torch.Tensor, page_size: int, length: torch.Tensor | int | None = None) -> torch.Tensor:
    """Quest's upper bound of each page's attention logit: sum over dims of max(q*kmax, q*kmin).

    queries (kv_heads, group, d) the step's query heads; keys (kv_heads, n, d), of which the first
    ``length`` are entries (all n when None; a device tensor for a fixed-capacity layer). Returns
    (kv_heads, group, pages) float32, pages = ceil(n / page_size); the last page holding entries
    may be partial, and pages past it are bounded by the last entry alone (the caller drops them)."""
    kv_heads, n, d = keys.shape
    n_pages = -(-n // page_size)
    last = (n if length is None else length) - 1
    # slots past the last entry repeat it: a partial page's min and max stay its entries'
    slots = torch.arange(n_pages * page_size, device=keys.device).clamp_max(last)
    k = keys.index_select(1, slots).float().view(kv_heads, n_pages, page_size, d)
    kmax, kmin = k.amax(dim=2), k.amin(dim=2)  # (kv_heads, pages, d)
    q = queries.float()[:, :, None, :]  # (kv_heads, group, 1, d)
    return torch.maximum(q * kmax[:, None], q * kmin[:, None]).sum(dim=-1)


@dataclass
class Quest(Retriever):
    name = "quest"
    graph_safe = True  # static shapes at a fixed capacity (Retriever.read_fixed), no host reads
    paper = "Tang et al., 2024. Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference"
    paper_url = "https://arxiv.org/abs/2406.10774"
    summary = N_("""Retrieval, not eviction: the cache keeps every entry and, per page of
    `page_size` consecutive entries, the element-wise minimum and maximum of its keys (the
    summary). At each decode step the query bounds every page's score from above,
    sum over dims of max(q x max, q x min), as in the authors' code (mit-han-lab/Quest), and the
    attention reads the highest-bound pages, read_budget // page_size of them and at least 3 (as
    the authors' evaluation code). As in the paper, the first `full_layers` layers read
    everything. Differs from Quest: the newest page (the token itself) is always read; kvviz's
    model shares KV heads between query heads (GQA), so a KV head reads one set of pages, chosen
    by the sum of its query heads' bounds (the authors' code repeats the KV heads and lets every
    query head choose its own pages); and pages are counted over the entries held, which after an eviction
    policy are no longer consecutive tokens.""")

    page_size: int = param(16, N_("Entries per page; each page keeps the min and max of its keys."), min=1, max=4096)
    full_layers: int = param(2, N_("First layers that read every entry (Quest skips the first two)."), min=0, max=1000)

    def pages(self, n: int) -> int:
        """Pages read with n entries held, when the read budget does not cover them: read_budget //
        page_size, at least 3 as the authors' evaluation code (evaluation/quest_attention.py)."""
        return min(max(self.read_budget // self.page_size, 3), -(-n // self.page_size))

    def layer_kind(self, layer_idx):
        return layer_idx < self.full_layers  # those read every entry

    def read_count(self, layer_idx, n):
        if layer_idx < self.full_layers or self.read_budget >= n:
            return n
        size, pages = self.page_size, -(-n // self.page_size)
        return (self.pages(n) - 1) * size + n - (pages - 1) * size  # full pages and the newest, partial

    def read_width(self, layer_idx, capacity):
        if layer_idx < self.full_layers:
            return capacity
        return min(capacity, max(self.read_budget, max(self.read_budget // self.page_size, 3) * self.page_size))

    def chosen(self, layer, ctx):
        valid = layer.valid()  # (n,)
        if layer.layer_idx < self.full_layers:
            return valid.expand(layer.kv_heads, -1)
        n, size = layer.n, self.page_size
        q = layer.captured_queries()[0][:, -1].reshape(layer.kv_heads, -1, layer.keys.shape[-1])  # (kv_heads, group, d)
        bound = page_bounds(q, layer.keys, size, layer.length).sum(dim=1)  # (kv_heads, pages)
        page_of = torch.arange(bound.shape[1], device=bound.device) * size  # first slot of each page
        bound = bound.masked_fill(page_of > layer.newest(), float("-inf"))  # pages past the entries
        bound.index_fill_(1, layer.newest() // size, float("inf"))  # the newest page holds the token itself
        top = bound.argsort(dim=-1, descending=True, stable=True)[:, : self.pages(n)]  # (kv_heads, p)
        pages = torch.zeros(bound.shape, dtype=torch.bool, device=bound.device).scatter_(1, top, True)
        # each slot's page (not repeat_interleave + slice: inductor in torch 2.13 fuses that with the
        # ``& valid`` wrongly, reading slots past the entries, in a fused step)
        read = pages.index_select(1, torch.arange(n, device=pages.device) // size) & valid  # (kv_heads, n)
        if layer.length is not None:  # a read budget that covers every entry held reads them all
            read |= valid & (layer.length <= self.read_budget)
        return read

    def summary_bytes(self, kv_heads, n, head_dim):
        return 2 * kv_heads * -(-n // self.page_size) * head_dim * 2  # min and max per page, 16-bit
