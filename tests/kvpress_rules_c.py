"""kvpress's ThinKPress, re-implemented for the tests from NVIDIA/kvpress's code (never from
kvviz's), on tensors of one layer, float64. Cites the commit, file and lines it follows."""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

THINK_SOURCE = "NVIDIA/kvpress 19a6374, `kvpress/presses/think_press.py` (`ThinKPress.compress`)"


def think_pruned_channels(h, wq, keys, rotary_emb, window=32, ratio=0.5):
    """The key channels ``ThinKPress.compress`` zeroes, per KV head: a (kv_heads, n_pruned) list of
    sets. h (n, hidden) the attention's input (after the layer norm), wq (q_heads * d, hidden),
    keys (kv_heads, n, d) RoPE applied, float64. As ``compute_window_queries``: the last ``window``
    hidden states through q_proj, RoPE at their positions; then ``queries_norm = pow(q, 2).mean(2)``
    viewed (kv_heads, groups, d) and averaged over the groups, ``keys_norm = pow(k, 2).mean(2)``,
    their product, and ``topk(int(head_dim * ratio), largest=False)``."""
    n, (kv_heads, _, d) = h.shape[0], keys.shape
    q_heads = wq.shape[0] // d
    q = (h[-window:] @ wq.T).view(window, q_heads, d).transpose(0, 1)[None]  # (1, q_heads, window, d)
    pos = torch.arange(n - window, n)[None]
    cos, sin = rotary_emb(h[None].float(), pos)
    q, _ = apply_rotary_pos_emb(q, q, cos.double(), sin.double())
    queries_norm = q.pow(2).mean(dim=2)[0].view(kv_heads, q_heads // kv_heads, d).mean(dim=1)  # (kv_heads, d)
    keys_norm = keys.pow(2).mean(dim=1)  # (kv_heads, d)
    scores = queries_norm * keys_norm
    n_pruned = int(d * ratio)
    pruned = scores.topk(n_pruned, dim=-1, largest=False)
    # the margin between the last channel pruned and the first kept, per head (a tie would flip)
    kept_min = scores.sort(dim=-1).values[:, n_pruned] if n_pruned < d else scores.new_full((kv_heads,), float("inf"))
    margin = ((kept_min - pruned.values.max(dim=-1).values) / kept_min).min().item() if n_pruned else float("inf")
    return [set(row.tolist()) for row in pruned.indices], margin
