"""The authors' released rules, re-implemented for the tests from their code (never from
kvviz's): SnapKV's and PyramidKV's selection, PyramidKV's budget schedule, KIVI's quantized
cache. Each cites the repository, commit, file and lines it follows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def snapkv_released(q: torch.Tensor, k: torch.Tensor, capacity: int, window: int, kernel: int, pooling: str = "avg"):
    """The prompt entries SnapKV keeps, per KV head, as the authors' code chooses them:
    ``SnapKVCluster.update_kv`` (FasterDecoding/SnapKV, commit e216ddc, snapkv/monkeypatch/
    snapkv_utils.py, lines 38-70) in its KV-head form (Zefan-Cai/KVCache-Factory, commit c97f9d7,
    pyramidkv/pyramidkv_utils.py, lines 273-320: the group's window scores averaged before
    pooling). q (q_heads, n, d), k (kv_heads, n, d), float64; ``capacity`` = max_capacity_prompt
    (window included). Returns (kept, pooled): kept[h] the sorted positions, pooled (kv_heads,
    n - window) the scores the top-k ran on (None when the prompt is not compressed)."""
    n, d = q.shape[1], q.shape[-1]
    if n < capacity:
        return [list(range(n))] * k.shape[0], None
    kv_heads, group = k.shape[0], q.shape[0] // k.shape[0]
    k_rep = k.repeat_interleave(group, dim=0)  # repeat_kv
    attn = q[:, -window:] @ k_rep.transpose(1, 2) / math.sqrt(d)  # (q_heads, window, n)
    causal = torch.full((window, window), torch.finfo(attn.dtype).min, dtype=attn.dtype).triu(1)
    attn[:, :, -window:] += causal
    attn = attn.softmax(dim=-1)
    votes = attn[:, :, :-window].sum(dim=-2)  # (q_heads, n - window)
    votes = votes.reshape(kv_heads, group, -1).mean(dim=1)  # _reduce_group_scores, 'mean'
    pool = F.avg_pool1d if pooling == "avg" else F.max_pool1d
    pooled = pool(votes[:, None], kernel_size=kernel, padding=kernel // 2, stride=1)[:, 0]
    top = pooled.topk(capacity - window, dim=-1).indices
    kept = [sorted(row.tolist()) + list(range(n - window, n)) for row in top]
    return kept, pooled


def pyramidkv_released_capacities(capacity: int, window: int, beta: int, q_len: int, n_layers: int) -> list[int]:
    """Entries selected before the window in each layer (the window comes on top), as
    ``PyramidKVCluster`` computes them (Zefan-Cai/KVCache-Factory, commit c97f9d7,
    pyramidkv/pyramidkv_utils.py, lines 360-375 and, KV-head path, 449-469)."""
    min_num = (capacity - window) // beta
    max_num = (capacity - window) * 2 - min_num
    if max_num >= q_len - window:
        max_num = q_len - window
        min_num = (capacity - window) * 2 - max_num
    steps = (max_num - min_num) // (n_layers - 1)
    out = []
    for layer_idx in range(n_layers):
        if q_len < capacity:
            out.append(q_len - window)  # no compression
        elif q_len < (capacity - window) * 2:
            out.append(capacity - window)
        else:
            out.append(max_num - layer_idx * steps)
    return out


def kivi_quantize_last_dim(data: torch.Tensor, group_size: int, bits: int):
    """``triton_quantize_and_pack_along_last_dim`` (jy-yuan/KIVI, commit 876b4d2,
    quant/new_pack.py, lines 217-252) without the packing: data (..., T) -> codes (..., T) int32,
    scale and mn (..., T // group_size), computed in data's dtype as the authors' code does."""
    shape = data.shape
    data = data.reshape(*shape[:-1], shape[-1] // group_size, group_size)
    mn, mx = data.amin(dim=-1), data.amax(dim=-1)
    scale = (mx - mn) / (2**bits - 1)
    codes = ((data - mn[..., None]) / scale[..., None]).clamp(0, 2**bits - 1).round().to(torch.int32)
    return codes.reshape(shape), scale, mn


class KiviReleased:
    """One layer's KIVI cache as ``LlamaAttention_KIVI.forward`` keeps it (jy-yuan/KIVI, commit
    876b4d2, models/llama_kivi.py: prefill keys lines 193-204, values 210-220; decode keys
    121-136, values 165-179), for (kv_heads, t, d) tensors. Keys: per channel, groups of G
    tokens, the newest prompt_len % R (then up to R) in full precision; values: per token,
    groups of G channels, the newest R in full precision. ``step`` returns what the step's
    attention reads (dequantized + full precision, the new token included), then quantizes."""

    def __init__(self, bits: int, group_size: int, residual: int):
        self.bits, self.g, self.r = bits, group_size, residual
        self.k_quant = self.v_quant = None  # (codes, scale, mn): keys transposed (kv, d, T), values (kv, T, d)
        self.k_full = self.v_full = None

    @staticmethod
    def _cat(old, new, dim):
        return new if old is None else tuple(torch.cat([a, b], dim=dim) for a, b in zip(old, new))

    def prefill(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        t = keys.shape[1]
        if t % self.r:
            k_quant, self.k_full = (None, keys) if t < self.r else (keys[:, : -(t % self.r)], keys[:, -(t % self.r) :])
        else:
            k_quant, self.k_full = keys, None
        if k_quant is not None:
            self.k_quant = kivi_quantize_last_dim(k_quant.transpose(1, 2), self.g, self.bits)
        if t <= self.r:
            self.v_full = values
        else:
            self.v_quant = kivi_quantize_last_dim(values[:, : -self.r], self.g, self.bits)
            self.v_full = values[:, -self.r :]

    def step(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k_full = key if self.k_full is None else torch.cat([self.k_full, key], dim=1)
        self.v_full = torch.cat([self.v_full, value], dim=1)
        read = self.keys(), self.values()  # the attention, before this step quantizes
        if self.k_full.shape[1] == self.r:
            self.k_quant = self._cat(self.k_quant, kivi_quantize_last_dim(self.k_full.transpose(1, 2), self.g, self.bits), 2)
            self.k_full = None
        if self.v_full.shape[1] > self.r:
            self.v_quant = self._cat(self.v_quant, kivi_quantize_last_dim(self.v_full[:, :1], self.g, self.bits), 1)
            self.v_full = self.v_full[:, 1:]
        return read

    def _dequant(self, quant):  # unpack_and_dequant_kcache / _vcache: code * scale + mn
        codes, scale, mn = quant
        c = codes.reshape(*codes.shape[:-1], -1, self.g).to(scale.dtype)
        return (c * scale[..., None] + mn[..., None]).reshape(codes.shape)

    def keys(self) -> torch.Tensor:
        parts = [] if self.k_quant is None else [self._dequant(self.k_quant).transpose(1, 2)]
        return torch.cat(parts + ([] if self.k_full is None else [self.k_full]), dim=1)

    def values(self) -> torch.Tensor:
        parts = [] if self.v_quant is None else [self._dequant(self.v_quant)]
        return torch.cat(parts + [self.v_full], dim=1)
