"""The authors' released rules, re-implemented for the tests from their code (never from
kvviz's): SnapKV's and PyramidKV's selection, PyramidKV's budget schedule, KIVI's quantized
cache, StreamingLLM's StartRecentKVCache, TOVA's TOVACache and H2O's H2OKVCache_LayerWise (with
``run_released``, a step-by-step run of the model whose layers hold those caches). Each cites
the repository, commit, file and lines it follows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


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


def start_recent_released(seq: torch.Tensor, start_size: int, recent_size: int) -> torch.Tensor:
    """``StartRecentKVCache.__call__`` (mit-han-lab/streaming-llm, commit 2e50426,
    streaming_llm/kv_cache.py, lines 40-64) on any tensor whose last dimension is the sequence
    (e.g. the positions the cache holds): above start_size + recent_size entries, the first
    start_size and the last recent_size stay. The authors' perplexity script calls it after every
    forward (examples/eval_long_ppl.py, line 93). It reads nothing but the order of the entries."""
    seq_len = seq.shape[-1]
    if seq_len <= start_size + recent_size:
        return seq
    return torch.cat([seq[..., :start_size], seq[..., seq_len - recent_size : seq_len]], dim=-1)


class TovaReleased:
    """One layer of ``TOVACache.reduce`` (schwartz-lab-NLP/TOVA, commit 9c7d09b,
    src/tova_cache.py, lines 31-51), called after every attention, the prompt's included
    (src/convert_models/llama_custom.py, lines 112-113): above cache_size entries, keep the
    cache_size with the highest attention of the last query, averaged over all the layer's query
    heads (``torch.mean(attn_weights[:, :, -1, :], dim=1)``); every KV head keeps the same entries."""

    def __init__(self, cache_size: int):
        self.cache_size = cache_size
        self.margins: list[float] = []  # per eviction: (lowest kept - highest evicted) / highest evicted

    def __call__(self, attn: torch.Tensor, kv_heads: int) -> torch.Tensor | None:
        """attn (q_heads, q_len, n) -> kept indices (kv_heads, cache_size), sorted, or None."""
        num_keys = attn.shape[-1]
        if num_keys <= self.cache_size:
            return None
        mean_attn_weights = attn[:, -1, :].mean(dim=0)
        vals = mean_attn_weights.sort(descending=True).values
        self.margins.append(float((vals[self.cache_size - 1] - vals[self.cache_size]) / vals[self.cache_size]))
        ind = mean_attn_weights.topk(self.cache_size).indices.sort().values
        return ind.expand(kv_heads, -1)


class H2OReleased:
    """One layer of ``H2OKVCache_LayerWise`` (FMInference/H2O, commit ac75c2a,
    h2o_hf/utils_real_drop/modify_llama.py: ``__call__`` lines 258-287, ``_update_hh_score``
    317-326), called after every attention with its softmax weights, the prompt's included
    (line 509): each entry's score is the attention it received, summed over the queries
    (``attn_score_cache.sum(0).sum(1)``) and accumulated over calls; above hh_size + recent_size
    entries, keep the recent_size newest and the hh_size highest-scoring of the others.

    The authors' code is MHA-only (its boolean mask of num_heads rows indexes a cache of
    num_key_value_heads rows). For GQA the scores of a KV head are those of its query heads
    summed, the group reduction of Zefan-Cai/KVCache-Factory (commit c97f9d7,
    pyramidkv/pyramidkv_utils.py: ``H2OKVCluster._update_kv_kv_head`` lines 863-890 with
    ``_reduce_group_scores`` lines 252-266, which takes the mean: the same ranking)."""

    def __init__(self, hh_size: int, recent_size: int):
        self.hh_size, self.recent_size = hh_size, recent_size
        self.cache_size = hh_size + recent_size
        self.hh_score: torch.Tensor | None = None  # (kv_heads, n)
        self.margins: list[float] = []

    def __call__(self, attn: torch.Tensor, kv_heads: int) -> torch.Tensor | None:
        scores = attn.sum(dim=1)  # (q_heads, n): over the queries
        scores = scores.reshape(kv_heads, -1, scores.shape[-1]).sum(dim=1)  # over each KV head's group
        num_new_tokens = attn.shape[1]
        if self.hh_score is None:
            self.hh_score = scores
        else:
            scores[:, :-num_new_tokens] += self.hh_score
            self.hh_score = scores
        seq_len = scores.shape[-1]
        if seq_len <= self.cache_size:
            return None
        select_hh_scores = self.hh_score[:, : seq_len - self.recent_size]
        if 0 < self.hh_size < select_hh_scores.shape[-1]:
            vals = select_hh_scores.sort(dim=-1, descending=True).values
            below = vals[:, self.hh_size]
            self.margins += ((vals[:, self.hh_size - 1] - below) / below).tolist()
        keep_topk = select_hh_scores.topk(self.hh_size, dim=-1).indices.sort().values
        keep_recent = torch.arange(seq_len - self.recent_size, seq_len).repeat(kv_heads, 1)
        keep_idx = torch.cat([keep_topk, keep_recent], dim=-1)
        mask = torch.zeros(self.hh_score.shape, dtype=torch.bool).scatter(-1, keep_idx, True)
        self.hh_score = self.hh_score[mask].view(kv_heads, self.cache_size)
        return mask.nonzero()[:, 1].view(kv_heads, self.cache_size)


def run_released(model, prompt: list[int], fed: list[int], make_cache):
    """A transformers Llama run whose every layer holds the released cache ``make_cache()``
    (TovaReleased, H2OReleased), independent of kvviz: the model's own modules (norms,
    projections, RoPE, MLPs) in float32, attention over the entries each KV head holds in
    float64, at true positions (TOVA's cache with position_encoding_compression off, H2O's
    H2OLlamaAttention). As in the released code the cache is called after the attention, whose
    output reads the entries before the eviction. ``fed``: one token per decode step.

    Returns (kept, caches): kept[step][layer][kv_head] the positions held after the prompt
    (step 0) and after each fed token; caches, one per layer (their ``margins``)."""
    m, cfg = model.model, model.config
    n_kv, n_q = cfg.num_key_value_heads, cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_q
    group = n_q // n_kv
    caches = [make_cache() for _ in m.layers]
    held = [{"pos": torch.empty(n_kv, 0, dtype=torch.long), "k": torch.empty(n_kv, 0, d, dtype=torch.float64),
             "v": torch.empty(n_kv, 0, d, dtype=torch.float64)} for _ in m.layers]
    kept, start = [], 0
    with torch.inference_mode():
        for chunk in [prompt] + [[t] for t in fed]:
            q_len = len(chunk)
            positions = torch.arange(start, start + q_len)
            start += q_len
            h = m.embed_tokens(torch.tensor([chunk]))
            cos, sin = m.rotary_emb(h, positions[None])
            for block, layer, cache in zip(m.layers, held, caches):
                a, x = block.self_attn, block.input_layernorm(h)
                q = a.q_proj(x).view(1, q_len, n_q, d).transpose(1, 2)
                k = a.k_proj(x).view(1, q_len, n_kv, d).transpose(1, 2)
                v = a.v_proj(x).view(1, q_len, n_kv, d).transpose(1, 2)
                q, k = apply_rotary_pos_emb(q, k, cos, sin)
                layer["k"] = torch.cat([layer["k"], k[0].double()], 1)
                layer["v"] = torch.cat([layer["v"], v[0].double()], 1)
                layer["pos"] = torch.cat([layer["pos"], positions.expand(n_kv, -1)], 1)
                k_rep = layer["k"].repeat_interleave(group, dim=0)  # repeat_kv: query head i reads KV head i // group
                v_rep = layer["v"].repeat_interleave(group, dim=0)
                pos_rep = layer["pos"].repeat_interleave(group, dim=0)
                logits = q[0].double() @ k_rep.transpose(1, 2) / math.sqrt(d)  # (q_heads, q_len, n)
                future = pos_rep[:, None, :] > positions[None, :, None]
                attn = logits.masked_fill(future, float("-inf")).softmax(dim=-1)
                out = (attn @ v_rep).transpose(0, 1).reshape(1, q_len, n_q * d).float()
                h = h + a.o_proj(out)
                h = h + block.mlp(block.post_attention_layernorm(h))
                keep = cache(attn, n_kv)
                if keep is not None:
                    layer["pos"] = layer["pos"].gather(1, keep)
                    for t in ("k", "v"):
                        layer[t] = layer[t].gather(1, keep[..., None].expand(-1, -1, d))
            kept.append([[row.tolist() for row in layer["pos"]] for layer in held])
    return kept, caches
