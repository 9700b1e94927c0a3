"""Queries and keys of an attention module, computed from what the module is called with.

kvviz never asks transformers for attention weights (``output_attentions`` materializes every
layer's full matrix). A forward pre-hook on an attention module sees the call's arguments: the
layer input ``hidden_states``, the rotary embedding ``position_embeddings = (cos, sin)``, the
``position_ids`` and the cache. From them this module computes queries and keys exactly as the
module does, per family behind two functions: ``projections`` (separate ``q_proj``/``k_proj``;
fused ``qkv_proj`` as in Phi-3 or ``query_key_value`` per head as in GPT-NeoX; q/k norms per head
as in Qwen-3 and Cohere, over all heads as in OLMo-2, per-head layernorms as in StableLM) and
``rope`` (the model's own ``apply_rotary_pos_emb``, on the first ``rotary_ndims`` dims only for
partial rotary, skipped in SmolLM-3's layers without RoPE). ``decoder_layers`` finds the layers
wherever the family keeps them; ``unreadable`` says why an attention cannot be read (MLA).

Two users, one implementation: ``kvviz.model.capture`` (attention maps of the layers being viewed)
and ``kvviz.runtime.policy_cache`` (the queries that attention-scored selectors need at each step).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from kvviz.i18n import N_, _


class CaptureError(ValueError):
    """A capture that cannot be done: bad layer/head/window, or an attention this module cannot read."""


@dataclass
class AttentionCall:
    """The arguments of one attention call that queries and keys are computed from."""

    module: torch.nn.Module
    hidden: torch.Tensor  # (1, q_len, hidden_size), the layer input after its norm
    cos: torch.Tensor | None  # (1, q_len, rotary_dim); None in a layer without RoPE
    sin: torch.Tensor | None
    position_ids: torch.Tensor | None  # (1, q_len) the tokens' true positions, when the caller passes them

    @classmethod
    def read(cls, module, args: tuple, kwargs: dict) -> "AttentionCall":
        """From a pre-hook's ``(args, kwargs)``; a layer without RoPE (SmolLM-3) has no cos/sin."""
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        embeddings = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
        if embeddings is None and uses_rope(module):
            raise CaptureError(_("The attention module got no position_embeddings; cannot apply RoPE."))
        cos, sin = embeddings if embeddings is not None else (None, None)
        return cls(module, hidden, cos, sin, kwargs.get("position_ids"))

    def queries(self) -> torch.Tensor:
        """(q_heads, q_len, head_dim), RoPE applied, in the model's dtype."""
        return self.batch_queries()[0]

    def batch_queries(self) -> torch.Tensor:
        """(batch, q_heads, q_len, head_dim), RoPE applied: every row of a batched forward."""
        q, _ = projections(self.module, self.hidden)
        return rope(self.module, q, self.cos, self.sin)

    def queries_and_keys(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q_heads, q_len, head_dim) and (kv_heads, q_len, head_dim), RoPE applied."""
        q, k = projections(self.module, self.hidden)
        return rope(self.module, q, self.cos, self.sin)[0], rope(self.module, k, self.cos, self.sin)[0]


# ------------------------------------------------------------------------------ decoder layers

LAYER_PATHS = ("model.layers", "model.language_model.layers", "gpt_neox.layers", "transformer.h", "layers")
ATTENTION_NAMES = ("self_attn", "attention", "attn")


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers, wherever the family keeps them (model.model.layers, model.gpt_neox.layers, ...)."""
    for path in LAYER_PATHS:
        node = model
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, torch.nn.ModuleList):
            return node
    raise CaptureError(_("{model}: no decoder layers found (looked for {paths}).").format(
        model=type(model).__name__, paths=", ".join(LAYER_PATHS)))


def decoder_attention(model) -> list[torch.nn.Module | None]:
    """The self-attention module of every decoder layer, in order (not checked for projections);
    None for a layer that has none under a known name."""
    return [next((getattr(layer, n) for n in ATTENTION_NAMES if hasattr(layer, n)), None) for layer in decoder_layers(model)]


def attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer, in order; each must be one whose queries
    and keys this module can compute (``unreadable`` says why not)."""
    mods = decoder_attention(model)
    for m in mods:
        why = unreadable(m)
        if why:
            raise CaptureError(_("{model}: {why}").format(model=type(model).__name__, why=shown_why(m, why)))
    return [m for m in mods if m is not None]  # unreadable() refused a None above: all of them


def unreadable(module) -> str | None:
    """Why kvviz cannot compute this attention's queries and keys, or None when it can."""
    if module is None:
        return NO_ATTENTION
    if hasattr(module, "kv_a_proj_with_mqa"):
        return MLA_REFUSAL
    if not any(hasattr(module, names[0]) for names in FUSED + (("q_proj", "k_proj"),)):
        return NO_PROJECTIONS.format(name=type(module).__name__)
    return None


def shown_why(module, why: str) -> str:
    """``unreadable(module)``'s reason (English: other modules compare it) in the session's language."""
    if why in (NO_ATTENTION, MLA_REFUSAL):
        return _(why)
    return _(NO_PROJECTIONS).format(name=type(module).__name__)


MLA_REFUSAL = N_("multi-head latent attention (MLA) caches a compressed latent per token; "
                 "kvviz's policies act on per-head keys and values.")
NO_ATTENTION = N_("a decoder layer without a self-attention module kvviz knows.")
NO_PROJECTIONS = N_("{name} has none of q_proj/k_proj, qkv_proj or query_key_value; kvviz cannot read its queries.")
FUSED = (("qkv_proj",), ("query_key_value",))  # Phi-3: [q | k | v]; GPT-NeoX: per head [q | k | v]


# ------------------------------------------------------------------------------ per family


def _heads(module) -> tuple[int, int, int]:
    """(query heads, KV heads, head dim) of an attention module."""
    cfg = module.config
    n_q = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_q
    head_dim = getattr(module, "head_dim", None) or getattr(module, "head_size", None) or cfg.hidden_size // n_q
    return n_q, n_kv, head_dim


def projections(module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k before RoPE, norms applied: hidden (batch, seq, hidden) -> (batch, heads, seq, head_dim)."""
    n_q, n_kv, d = _heads(module)
    shape = (*hidden.shape[:-1], -1, d)
    if hasattr(module, "query_key_value"):  # GPT-NeoX: heads of [q | k | v] each
        qkv = module.query_key_value(hidden).view(*hidden.shape[:-1], -1, 3 * d).transpose(1, 2)
        q, k, _ = qkv.chunk(3, dim=-1)
        return q, k
    if hasattr(module, "qkv_proj"):  # Phi-3: [all q | all k | all v]
        qkv = module.qkv_proj(hidden)
        q, k = qkv[..., : n_q * d], qkv[..., n_q * d : (n_q + n_kv) * d]
        return q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2)
    return project(module, hidden, "q_proj", "q_norm"), project(module, hidden, "k_proj", "k_norm")


def project(module, hidden: torch.Tensor, proj: str, norm: str) -> torch.Tensor:
    """q or k of ``module`` from its input. hidden: (batch, seq, hidden) -> (batch, heads, seq, head_dim)."""
    head_dim = _heads(module)[2]
    x = getattr(module, proj)(hidden)  # (1, seq, heads * head_dim)
    normer = getattr(module, norm, None)
    weight = getattr(normer, "weight", None)
    if normer is not None and weight is not None and weight.ndim == 1 and weight.numel() != head_dim:
        x = normer(x)  # OLMo-2 style: norm over all heads at once
        normer = None
    x = x.view(*hidden.shape[:-1], -1, head_dim)
    if normer is not None:
        x = normer(x)  # Qwen-3 style: per-head norm (Cohere: one weight row per head)
    x = x.transpose(1, 2)
    per_head = getattr(module, proj[0] + "_layernorm", None) if getattr(module, "qk_layernorm", False) else None
    return per_head(x) if per_head is not None else x  # StableLM: a norm per head, on (batch, heads, seq, d)


def uses_rope(module) -> bool:
    """False for the layers without RoPE of SmolLM-3 (``use_rope`` 0)."""
    return bool(getattr(module, "use_rope", True))


def rope(module, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
    """The model's rotary embedding applied to x (batch, heads, seq, head_dim) alone; only on the
    first ``rotary_ndims`` dims where the module rotates part of a head (StableLM, GPT-NeoX)."""
    if cos is None or not uses_rope(module):
        return x
    rotary_dim = getattr(module, "rotary_ndims", None) or x.shape[-1]
    if rotary_dim < x.shape[-1]:
        return torch.cat([rope(module, x[..., :rotary_dim], cos, sin), x[..., rotary_dim:]], dim=-1)
    rotated, _ = _rope_function(module)(x, x[:, :1], cos, sin)
    return rotated


def _rope_function(module):
    """The model's own apply_rotary_pos_emb (handles partial and interleaved variants)."""
    fn = getattr(sys.modules.get(type(module).__module__), "apply_rotary_pos_emb", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as fn
    return fn
