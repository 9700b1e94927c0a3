"""Independent references for the tests: queries and keys straight from a transformers Llama's
own modules (not kvviz's capture or cache), for float64 recomputations of attention."""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


def projections(model, ids, sees: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys of ``ids`` in every layer, RoPE applied, float64:
    (layers, q_heads, n, head_dim) and (layers, kv_heads, n, head_dim). ``sees`` (n, n) bool:
    what each position attends to (default: causal), e.g. a band for a sliding window."""
    n = len(ids)
    pos = torch.arange(n)[None]
    mask = None if sees is None else torch.zeros(1, 1, n, n).masked_fill(~sees, float("-inf"))
    with torch.inference_mode():
        out = model.model(
            input_ids=torch.tensor([ids]), position_ids=pos, attention_mask=mask, use_cache=False, output_hidden_states=True
        )
        cos, sin = model.model.rotary_emb(out.hidden_states[0], pos)
        qs, ks = [], []
        for layer, hidden in zip(model.model.layers, out.hidden_states):  # hidden_states[l]: the input of layer l
            attn, h = layer.self_attn, layer.input_layernorm(hidden)
            q = attn.q_proj(h).view(1, n, -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(1, n, -1, attn.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            qs.append(q[0].double())
            ks.append(k[0].double())
    return torch.stack(qs), torch.stack(ks)


def grouped_softmax(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """q (q_heads, nq, d), k (kv_heads, nk, d), mask (nq, nk) bool of what each query sees ->
    (kv_heads, group, nq, nk): softmax attention, each query head over its KV head."""
    kv_heads, d = k.shape[0], k.shape[-1]
    logits = torch.einsum("hgqd,hkd->hgqk", q.reshape(kv_heads, -1, q.shape[1], d), k) / d**0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(-1)


def window_band(n: int, prompt_len: int, window: int) -> torch.Tensor:
    """(n, n) bool: what each position sees under a sliding-window cache of ``window`` entries:
    prompt positions the whole causal prefix (the prompt is compressed after its prefill), a
    generated position i the positions i - window .. i (the held entries and itself)."""
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (j <= i) & ((i < prompt_len) | (j >= i - window))


# ------------------------------------------------------------------ next-token distributions


def plain_logprobs64(model, seq: list[int], prompt_len: int, sees: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probabilities (float64) of every step of a run over ``seq`` (the prompt, then each fed
    token): the last prompt position's prediction, then each fed token's, from one plain
    transformers forward with eager attention and, when given, a 4D additive mask made from
    ``sees`` (n, n) bool (what each position attends to; default causal). (steps, vocab)."""
    n = len(seq)
    mask = None if sees is None else torch.zeros(1, 1, n, n).masked_fill(~sees, float("-inf"))
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            logits = model(
                input_ids=torch.tensor([seq]), position_ids=torch.arange(n)[None], attention_mask=mask, use_cache=False
            ).logits
    finally:
        model.set_attn_implementation(before)
    return logits[0, prompt_len - 1 :].double().log_softmax(-1)


def kl_rows(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, float64, from log-probabilities (steps, vocab): sum p (log p - log q)."""
    p_log, q_log = p_log.double(), q_log.double()
    return (p_log.exp() * (p_log - q_log)).sum(-1)
