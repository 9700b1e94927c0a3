"""kvpress's ExpectedAttentionPress, ChunkKVPress and AdaKVPress, re-implemented for the tests
from NVIDIA/kvpress's code (never from kvviz's), on tensors of one layer, float64. Each cites
the commit, file and lines it follows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


def layer_inputs(model, ids):
    """Per layer: the attention's input hidden states (n, hidden), W_q (q_heads * d, hidden),
    keys (kv_heads, n, d) RoPE applied and values (kv_heads, n, d), float64; and the model's
    rotary embedding module (for the future positions)."""
    n = len(ids)
    pos = torch.arange(n)[None]
    out = []
    with torch.inference_mode():
        res = model.model(input_ids=torch.tensor([ids]), position_ids=pos, use_cache=False, output_hidden_states=True)
        cos, sin = model.model.rotary_emb(res.hidden_states[0], pos)
        for layer, hidden in zip(model.model.layers, res.hidden_states):
            attn, h = layer.self_attn, layer.input_layernorm(hidden)
            k = attn.k_proj(h).view(1, n, -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, n, -1, attn.head_dim).transpose(1, 2)
            _, k = apply_rotary_pos_emb(k, k, cos, sin)
            out.append((h[0].double(), attn.q_proj.weight.double(), k[0].double(), v[0].double()))
    return out


def expected_attention_scores(h, wq, keys, values, rotary_emb, n_future=512, n_sink=4, use_covariance=True,
                              use_vnorm=True, epsilon=0.0):
    """(kv_heads, n) scores of ``ExpectedAttentionPress`` (NVIDIA/kvpress, commit 08a43bf,
    kvpress/presses/expected_attention_press.py: ``get_query_statistics`` and ``score``): statistics of the hidden states after the sinks projected by W_q,
    RoPE averaged over positions n .. n + n_future - 1 (the model's own rotary embedding),
    softmax over the keys after the sinks, mean over the group, times the value norms, sinks
    padded with the maximum."""
    n, d = h.shape[0], keys.shape[-1]
    q_heads = wq.shape[0] // d
    x = h[n_sink:]
    mean_h = x.mean(dim=0, keepdim=True)  # (1, hidden)
    mu = (mean_h @ wq.T).view(q_heads, d)
    cov = None
    if use_covariance:
        xc = x - mean_h
        cov_h = xc.T @ xc / xc.shape[0]  # (hidden, hidden)
        full = wq @ cov_h @ wq.T  # (q_heads * d, q_heads * d)
        cov = torch.stack([full[i * d:(i + 1) * d, i * d:(i + 1) * d] for i in range(q_heads)])
    position_ids = torch.arange(n, n + n_future)[None]
    cos, sin = rotary_emb(mu.float()[None], position_ids)
    cos, sin = cos[0].double(), sin[0].double()  # (n_future, d)
    eye = torch.eye(d, dtype=torch.float64)
    P = torch.zeros(d, d, dtype=torch.float64)
    P[d // 2:, : d // 2], P[: d // 2, d // 2:] = torch.eye(d // 2), -torch.eye(d // 2)
    R = (cos[:, :, None] * eye + sin[:, :, None] * P).mean(dim=0)
    mu = mu @ R.T
    if use_covariance:
        cov = R @ cov @ R.T
    k, v = keys[:, n_sink:], values[:, n_sink:]
    kv_heads, m = k.shape[0], k.shape[1]
    group = q_heads // kv_heads
    kr = k.repeat_interleave(group, dim=0)  # repeat_kv
    scores = torch.einsum("hd,hmd->hm", mu, kr) / math.sqrt(d)
    if use_covariance:
        scores = scores + torch.einsum("hmi,hij,hmj->hm", kr, cov, kr) / d / 2
    scores = scores.softmax(dim=-1).view(kv_heads, group, m).mean(dim=1)
    if use_vnorm:
        scores = (scores + epsilon) * v.norm(dim=-1)
    return F.pad(scores, (n_sink, 0), value=scores.max().item())


def scorer_keep(scores, n_kept):
    """``ScorerPress.compress`` (NVIDIA/kvpress, commit 82cc93e, kvpress/presses/scorer_press.py):
    the top ``n_kept`` scores per KV head. Returns per head the sorted kept indices."""
    return [sorted(row.tolist()) for row in scores.topk(n_kept, dim=-1).indices]


def knorm_scores(keys):
    """``KnormPress.score`` (NVIDIA/kvpress, kvpress/presses/knorm_press.py): -||k||."""
    return -keys.norm(dim=-1)


def chunkkv_keep(scores, chunk_length, n_chunks_kept):
    """Kept indices (shared by every head) of ``ChunkKVPress.compress`` (NVIDIA/kvpress, commit
    19a6374, kvpress/presses/chunkkv_press.py, lines 47-115): scores (kv_heads, n) summed over
    heads, averaged per chunk (the partial last chunk its own), the top chunks kept whole. The
    press computes n_chunks_kept = max(1, int(chunks * (1 - compression_ratio)))."""
    n = scores.shape[-1]
    full, rest = n // chunk_length, n % chunk_length
    summed = scores.sum(dim=0)  # (n,)
    chunk_scores = summed[: full * chunk_length].view(full, chunk_length).mean(dim=-1)
    if rest:
        chunk_scores = torch.cat([chunk_scores, summed[-rest:].mean(dim=-1, keepdim=True)])
    kept = []
    for c in chunk_scores.topk(n_chunks_kept).indices.tolist():
        kept += list(range(c * chunk_length, min((c + 1) * chunk_length, n)))
    return sorted(kept)


def adakv_keep(scores, n_kept, alpha):
    """``AdaKVPress.compress`` (NVIDIA/kvpress, commit 002ac9d, kvpress/presses/adakv_press.py,
    ``compress``, lines 32-55): the top int(n_kept * alpha) of each head raised to the float maximum, then the
    kv_heads * (n - n_kept) lowest scores over all heads pruned. Returns per head the sorted
    indices not pruned (each head its own count)."""
    kv_heads, n = scores.shape
    scores = scores.clone()
    n_safe = int(n_kept * alpha)
    top = scores.topk(n_safe, dim=-1).indices
    scores.scatter_(-1, top, torch.finfo(scores.dtype).max)
    n_pruned = kv_heads * (n - n_kept)
    pruned = (-scores.reshape(-1)).topk(n_pruned).indices
    keep = torch.ones(kv_heads * n, dtype=torch.bool)
    keep[pruned] = False
    keep = keep.view(kv_heads, n)
    return [torch.nonzero(row).flatten().tolist() for row in keep]
