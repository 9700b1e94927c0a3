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


# ------------------------------------------------------------------ a policy, step by step


def h2o_rule(recent: int):
    """H2O (Zhang et al., 2023): every entry accumulates the attention it receives (the mean over
    its KV head's query heads, summed over queries); keep the ``recent`` newest and the highest
    accumulated others."""

    def rule(layer: dict, probs: torch.Tensor, budget: int):
        layer["acc"] = layer["acc"] + probs.mean(1).sum(1)  # (kv_heads, n)
        pos = layer["pos"]
        protect = pos > pos.amax(-1, keepdim=True) - recent
        return layer["acc"], protect

    return rule


def tova_rule(layer: dict, probs: torch.Tensor, budget: int):
    """TOVA (Oren et al., 2024): the current (last) query's attention, averaged over all the
    layer's heads; no protection."""
    score = probs[:, :, -1].mean(1).mean(0, keepdim=True).expand(probs.shape[0], -1)
    return score, torch.zeros(score.shape, dtype=torch.bool)


def merge_into_kept(layer: dict, keep: torch.Tensor) -> None:
    """CaM/D2O-style merging as kvviz documents it: each evicted entry folds into the kept entry
    of its KV head with the most similar key (cosine), k' = (a_k k + sum a_e e) / (a_k + sum a_e),
    the same for values, a = accumulated attention; the kept entry's attention becomes the sum."""
    for h in range(keep.shape[0]):
        n = layer["pos"].shape[1]
        gone = sorted(set(range(n)) - set(keep[h].tolist()))
        if not gone:
            continue
        kk, kg = layer["k"][h, keep[h]], layer["k"][h, gone]
        cos = torch.nn.functional.normalize(kg, dim=-1) @ torch.nn.functional.normalize(kk, dim=-1).T
        target = cos.argmax(-1)
        a_keep, a_gone = layer["acc"][h, keep[h]].clone(), layer["acc"][h, gone]
        for t in ("k", "v"):
            kept, evicted = layer[t][h, keep[h]], layer[t][h, gone]
            num, den = a_keep[:, None] * kept, a_keep.clone()
            num = num.index_add(0, target, a_gone[:, None] * evicted)
            den = den.index_add(0, target, a_gone)
            layer[t][h, keep[h]] = num / den[:, None]
        layer["acc"][h, keep[h]] = a_keep.index_add(0, target, a_gone)


def replay(model, prompt: list[int], fed: list[int], budget: int, rule, merge: bool = False):
    """A Llama run under an eviction policy, recomputed independently of kvviz: the model's own
    modules (norms, projections, RoPE, MLPs) in float32, every layer's attention over the entries
    each KV head holds in float64, and the policy's ``rule(layer, probs, budget) -> (scores,
    protected)`` deciding after every update which ``budget`` entries stay (protected ones, then
    the highest scores), as kvviz does: the attention of a step reads the entries before its
    eviction. ``fed``: the tokens fed after the prompt, one per decode step.

    Returns (kept, margins): kept[step][layer][kv_head] the positions held after the prefill
    (step 0) and after each fed token; margins: per decision, how far the lowest score kept on
    merit is above the highest evicted, relative to it (a small one is a near-tie)."""
    m, cfg = model.model, model.config
    n_kv, n_q = cfg.num_key_value_heads, cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_q
    group = n_q // n_kv
    layers = [
        {"pos": torch.empty(n_kv, 0, dtype=torch.long), "k": torch.empty(n_kv, 0, d, dtype=torch.float64),
         "v": torch.empty(n_kv, 0, d, dtype=torch.float64), "acc": torch.empty(n_kv, 0, dtype=torch.float64)}
        for _ in m.layers
    ]
    kept, margins, start = [], [], 0
    with torch.inference_mode():
        for chunk in [prompt] + [[t] for t in fed]:
            q_len = len(chunk)
            positions = torch.arange(start, start + q_len)
            start += q_len
            h = m.embed_tokens(torch.tensor([chunk]))
            cos, sin = m.rotary_emb(h, positions[None])
            for attn_layer, layer in zip(m.layers, layers):
                a, x = attn_layer.self_attn, attn_layer.input_layernorm(h)
                q = a.q_proj(x).view(1, q_len, n_q, d).transpose(1, 2)
                k = a.k_proj(x).view(1, q_len, n_kv, d).transpose(1, 2)
                v = a.v_proj(x).view(1, q_len, n_kv, d).transpose(1, 2)
                q, k = apply_rotary_pos_emb(q, k, cos, sin)
                layer["k"] = torch.cat([layer["k"], k[0].double()], 1)
                layer["v"] = torch.cat([layer["v"], v[0].double()], 1)
                layer["pos"] = torch.cat([layer["pos"], positions.expand(n_kv, -1)], 1)
                layer["acc"] = torch.cat([layer["acc"], torch.zeros(n_kv, q_len, dtype=torch.float64)], 1)
                logits = torch.einsum("hgqd,hnd->hgqn", q[0].double().reshape(n_kv, group, q_len, d), layer["k"]) / d**0.5
                future = layer["pos"][:, None, None, :] > positions[None, None, :, None]
                probs = logits.masked_fill(future, float("-inf")).softmax(-1)  # (kv_heads, group, q, n)
                out = torch.einsum("hgqn,hnd->qhgd", probs, layer["v"]).reshape(1, q_len, n_q * d).float()
                h = h + a.o_proj(out)
                h = h + attn_layer.mlp(attn_layer.post_attention_layernorm(h))
                scores, protect = rule(layer, probs, budget)
                if layer["pos"].shape[1] > budget:
                    ranked = scores.masked_fill(protect, float("inf"))
                    order = ranked.argsort(-1, descending=True)
                    cut = ranked.gather(1, order[:, budget - 1 : budget])[:, 0]
                    below = ranked.gather(1, order[:, budget : budget + 1])[:, 0]
                    finite = torch.isfinite(cut)
                    margins += ((cut - below)[finite] / below[finite].abs().clamp_min(1e-12)).tolist()
                    keep = order[:, :budget].sort(-1).values
                    if merge:
                        merge_into_kept(layer, keep)
                    for t in ("pos", "acc"):
                        layer[t] = layer[t].gather(1, keep)
                    for t in ("k", "v"):
                        layer[t] = layer[t].gather(1, keep[..., None].expand(-1, -1, d))
            kept.append([[row.tolist() for row in layer["pos"]] for layer in layers])
    return kept, margins
