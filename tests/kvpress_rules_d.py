"""kvpress's CriticalKVPress, CriticalAdaKVPress, DuoAttentionPress (on-the-fly mode) and
KVzipPress, re-implemented for the tests from NVIDIA/kvpress's code (never from kvviz's), in
float64 on SmolLM2's tensors. Each cites the commit, file and lines it follows."""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, rotate_half

KVPRESS = "NVIDIA/kvpress 8bb29b9"
CRITICALKV_SOURCE = f"{KVPRESS}, `kvpress/presses/criticalkv_press.py` (`CriticalKVPress.score`, `CriticalAdaKVPress.compress`)"
DUO_SOURCE = f"{KVPRESS}, `kvpress/presses/duo_attention_press.py` (`duo_attention_on_the_fly`, `compress`)"
KVZIP_SOURCE = f"{KVPRESS}, `kvpress/presses/kvzip_press.py` (`prepare`, `score_kvzip`, `compress_post`)"
TOP = torch.finfo(torch.float64).max


def vwl1norm(values, w_o, q_heads):
    """``CriticalKVPress.vwl1norm`` (criticalkv_press.py lines 58-76): values (kv_heads, n, d),
    W_o (hidden, q_heads * d) -> (kv_heads, n): the L1 norm of repeat_kv(values) @ W_o's rows of
    each head, averaged over the group."""
    kv_heads, n, d = values.shape
    wo = w_o.transpose(0, 1).reshape(q_heads, d, -1)
    v = values.repeat_interleave(q_heads // kv_heads, dim=0)  # repeat_kv
    norms = torch.stack([torch.norm(v[h] @ wo[h], p=1, dim=-1) for h in range(q_heads)])
    return norms.view(kv_heads, -1, n).mean(dim=1)


def criticalkv_keep(scores, values, w_o, q_heads, n_kept, epsilon=1e-4, first_stage_ratio=0.5):
    """``CriticalKVPress.score`` (lines 78-92) then ``ScorerPress.compress``'s top ``n_kept``:
    per KV head the sorted kept indices. ``selection_budget = int((1 - compression_ratio) * k_len
    * first_stage_ratio)``, taken here on the caller's ``n_kept``."""
    first = int(n_kept * first_stage_ratio)
    top = torch.topk(scores, first, sorted=True, dim=-1).indices
    refined = (scores + epsilon) * vwl1norm(values, w_o, q_heads)
    refined.scatter_(-1, top, TOP)
    return [sorted(row.tolist()) for row in refined.topk(n_kept, dim=-1).indices]


def critical_adakv_keep(scores, values, w_o, q_heads, n_kept, alpha=0.2, epsilon=1e-4, first_stage_ratio=0.5):
    """``CriticalAdaKVPress.compress`` (lines 137-192): safeguard, head budgets over all heads,
    stage 1 per head on int(budget × first_stage_ratio), stage 2 with the projected value norm, each
    head's budget raised, then the layer's lowest kv_heads × (n - n_kept) pruned. Returns per head
    the sorted indices not pruned, and the head budgets."""
    kv_heads, n = scores.shape
    scores = scores.clone()
    n_safe = int(n_kept * alpha)
    safe = torch.topk(scores, n_safe, dim=-1).indices
    scores.scatter_(-1, safe, TOP)
    chosen = torch.topk(scores.reshape(-1), n_kept * kv_heads).indices
    budgets = torch.zeros(kv_heads, dtype=torch.int64).scatter_add_(0, chosen // n, torch.ones_like(chosen))
    first = (budgets * first_stage_ratio).to(torch.int64).tolist()
    top = torch.topk(scores, max(first), sorted=True, dim=-1).indices
    for h in range(kv_heads):
        scores[h].scatter_(-1, top[h, : first[h]], TOP)
    scores = (scores + epsilon) * vwl1norm(values, w_o, q_heads)
    top = torch.topk(scores, int(budgets.max()), sorted=True, dim=-1).indices
    for h in range(kv_heads):
        scores[h].scatter_(-1, top[h, : budgets[h]], TOP)
    pruned = torch.topk(-scores.reshape(-1), kv_heads * (n - n_kept)).indices
    keep = torch.ones(kv_heads * n, dtype=torch.bool)
    keep[pruned] = False
    return [torch.nonzero(row).flatten().tolist() for row in keep.view(kv_heads, n)], budgets.tolist()


def duo_head_scores(model, ids, q_len=500):
    """``duo_attention_on_the_fly`` (duo_attention_press.py lines 145-204) on one text, ``ids``,
    instead of 50 BookSum samples: per layer the mean query and key (q_proj, k_proj of the layer's
    normed input), repeated q_len times, RoPE at 0 .. q_len - 1, the last query's attention, the
    mean of its cumulative sum, averaged over the group. -> (layers, kv_heads) numpy."""
    cfg = model.config
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    position_ids = torch.arange(q_len)[None]
    out = []
    with torch.no_grad():
        hidden_states = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[:-1]
        for layer, h in zip(model.model.layers, hidden_states):
            d = layer.self_attn.head_dim
            h = layer.input_layernorm(h)
            q = layer.self_attn.q_proj(h).view(1, h.shape[1], -1, d).mean(dim=1, keepdim=True)
            q = q.repeat(1, q_len, 1, 1).transpose(1, 2)
            k = layer.self_attn.k_proj(h).view(1, h.shape[1], -1, d).mean(dim=1, keepdim=True)
            k = k.repeat(1, q_len, 1, 1).transpose(1, 2)
            cos, sin = model.model.rotary_emb(h, position_ids)
            q, k = apply_rotary_pos_emb(q.double(), k.double(), cos.double(), sin.double())
            k = k.repeat_interleave(groups, dim=1)
            w = (torch.matmul(q[:, :, -1:, :], k.transpose(2, 3)) / d**0.5).softmax(dim=-1).squeeze()
            out.append(torch.cumsum(w, dim=1).mean(1).view(-1, groups).mean(1))
    return torch.stack(out).numpy()


def duo_streaming_mask(head_scores, head_compression_ratio):
    """``post_init_from_model`` (lines 72-87): the round(size × ratio) lowest scores are streaming."""
    mask = np.zeros(head_scores.shape, dtype=bool)
    n_pruned = round(head_scores.size * head_compression_ratio)
    if n_pruned > 0:
        mask[np.unravel_index(np.argsort(head_scores, axis=None)[:n_pruned], head_scores.shape)] = True
    return mask


def duo_keep(streaming_row, n, sink_size, recent_size):
    """``compress`` (lines 98-117): a streaming head's entries sink_size .. n - recent_size masked."""
    every = list(range(n))
    kept = list(range(sink_size)) + list(range(n - recent_size, n))
    return [kept if s else every for s in streaming_row]


def kvzip_scores(model, tokenizer, ids, n_sink=4, chunk_size=2048):
    """``KVzipPress`` (kvzip_press.py): the context prefilled into a DynamicCache; per chunk of
    ``chunk_size`` (``prepare``, lines 225-264) the repeat prompt, the chat template's answer
    opening (``__call__``'s suffix) and the chunk, through the model with that cache; per layer
    (``score_kvzip``, lines 287-358) the queries RoPE'd from the call's position embeddings, the keys
    [sinks, chunk, repeat], the softmax causal within the repeat, the max over group and queries;
    the cache cut back to the context. The context has no template prefix here (prefix_length 0).
    -> (layers, kv_heads, n) float64."""
    cfg = model.config
    n, d = len(ids), cfg.hidden_size // cfg.num_attention_heads
    kv, groups = cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads
    dummy = "dummy context"
    sep = "\n" + "#" * len(dummy)
    suffix_text = tokenizer.apply_chat_template([{"role": "user", "content": dummy + sep}], add_generation_prompt=True,
                                                tokenize=False).split(sep)[1]
    suffix = tokenizer.encode(suffix_text, add_special_tokens=False)
    score_val = torch.zeros(cfg.num_hidden_layers, kv, n, dtype=torch.float64)
    score_val[..., :n_sink] = 1.0
    cache = DynamicCache(config=cfg)
    span = {}

    def hook(layer_idx):
        def after(module, args, kwargs, output):
            h = kwargs["hidden_states"]
            q_len = h.shape[1]
            q = module.q_proj(h).view(1, q_len, -1, d).transpose(1, 2).double()
            cos, sin = kwargs["position_embeddings"]
            q = q * cos.unsqueeze(1).double() + rotate_half(q) * sin.unsqueeze(1).double()
            q = q.view(1, kv, groups, q_len, d)
            keys = cache.layers[layer_idx].keys.double()
            start, end = span["start"], span["end"]
            sink = min(n_sink, start)
            sub = torch.cat([keys[:, :, :sink], keys[:, :, start:end], keys[:, :, -q_len:]], dim=2)
            w = torch.matmul(q, sub.unsqueeze(2).transpose(-2, -1)) / math.sqrt(d)
            causal = torch.full((q_len, q_len), torch.finfo(w.dtype).min, dtype=w.dtype).triu(1)
            w[..., -q_len:, -q_len:] += causal
            w = w.softmax(dim=-1)[..., sink : sink + end - start]
            score_val[layer_idx, :, start:end] = w.amax(dim=(-3, -2))[0]
        return after

    with torch.no_grad():
        model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
        handles = [layer.self_attn.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(model.model.layers)]
        try:
            chunks = [ids[s : s + chunk_size] for s in range(0, n, chunk_size)]
            for i, chunk in enumerate(chunks):
                if i == 0:
                    ask = tokenizer.encode("\n\nRepeat the previous context exactly.", add_special_tokens=False)
                else:
                    ask = tokenizer.encode("\n\nRepeat the part of the previous context exactly, starting with",
                                           add_special_tokens=False) + chunks[i - 1][-8:]
                span["start"] = i * chunk_size
                span["end"] = span["start"] + len(chunk)
                model(input_ids=torch.tensor([ask + suffix + chunk]), past_key_values=cache, use_cache=True)
                for layer in cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, :n], layer.values[:, :, :n]
        finally:
            for h in handles:
                h.remove()
    return score_val


def kvzip_layerwise_keep(scores, n_kept):
    """``compress_post`` with ``layerwise=True`` (lines 360-395): the layer's kv_heads × (n - n_kept)
    lowest scores over all its heads pruned (n_kept: the caller's per-head budget). Per head the
    sorted indices not pruned."""
    kv_heads, n = scores.shape
    pruned = torch.topk(-scores.reshape(-1), kv_heads * (n - n_kept)).indices
    keep = torch.ones(kv_heads * n, dtype=torch.bool)
    keep[pruned] = False
    return [torch.nonzero(row).flatten().tolist() for row in keep.view(kv_heads, n)]
