"""A hashed key summary: SimHash signatures of the keys; the query's signature picks what each step reads."""

from dataclasses import dataclass
from functools import lru_cache

import torch

from kvviz.i18n import N_
from kvviz.policies.params import param
from kvviz.policies.selector import Retriever


def hyperplanes(tables: int, bits: int, head_dim: int, seed: int) -> torch.Tensor:
    """(tables, bits, head_dim) float32 standard normal hyperplanes, the same for a seed on any device."""
    return torch.randn(tables, bits, head_dim, generator=torch.Generator().manual_seed(seed))


@lru_cache(maxsize=32)
def _planes_on(tables: int, bits: int, head_dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """The hyperplanes, copied to ``device`` once (at the prefill): a decode step copies nothing
    from the host, so it does not wait on the GPU."""
    return hyperplanes(tables, bits, head_dim, seed).to(device)


def hamming_similarity(queries: torch.Tensor, keys: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """Matching signature bits, summed over the tables: queries (kv_heads, group, d), keys
    (kv_heads, n, d), planes (tables, bits, d). Returns (kv_heads, group, n) int."""
    planes = planes.to(keys.device)
    k_sig = torch.einsum("hnd,tbd->hntb", keys.float(), planes) > 0  # (kv_heads, n, tables, bits)
    q_sig = torch.einsum("hgd,tbd->hgtb", queries.float(), planes) > 0  # (kv_heads, group, tables, bits)
    return (q_sig[:, :, None] == k_sig[:, None]).sum(dim=(-1, -2))


@dataclass
class SimHash(Retriever):
    name = "simhash"
    graph_safe = True  # static shapes at a fixed capacity (Retriever.read_fixed), no host reads
    paper = "Chen et al., 2024. MagicPIG: LSH Sampling for Efficient LLM Generation; Desai et al., 2024. HashAttention"
    paper_url = "https://arxiv.org/abs/2410.16179"
    summary = N_("""Retrieval, not eviction: the cache keeps every entry and, beside it, a SimHash
    signature of its key: `bits` signs of random projections in each of `tables` tables
    (bits x tables bits per key, the summary). At each decode step the query's signature ranks
    the entries by Hamming similarity (matching bits, summed over the tables and over the KV
    head's query heads) and the attention reads the read_budget most similar. The hash follows
    MagicPIG (random SimHash, K bits in L tables); the choice follows HashAttention (top-k by
    Hamming similarity). Differs from both: MagicPIG takes the entries that collide in enough
    tables and samples them with importance weights, on the CPU; HashAttention learns its hash
    functions; kvviz uses fixed random hyperplanes (seeded) and a plain top-k, and recomputes
    the signatures each step instead of storing them.""")

    bits: int = param(8, N_("Signature bits per key in each table."), min=1, max=64)
    tables: int = param(4, N_("Hash tables (independent sets of hyperplanes)."), min=1, max=64)
    seed: int = param(0, N_("Seed of the random hyperplanes."), min=0, max=2**31 - 1)

    def rank(self, layer, ctx):
        d = layer.keys.shape[-1]
        q = layer.captured_queries()[0][:, -1].reshape(layer.kv_heads, -1, d)  # (kv_heads, group, d)
        planes = _planes_on(self.tables, self.bits, d, self.seed, layer.keys.device)
        return hamming_similarity(q, layer.keys, planes).sum(dim=1)

    def summary_bytes(self, kv_heads, n, head_dim):
        return kv_heads * n * -(-self.bits * self.tables // 8)
