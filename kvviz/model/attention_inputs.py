"""Queries and keys of an attention module, computed from what the module is called with.

kvviz never asks transformers for attention weights (``output_attentions`` materializes every
layer's full matrix). A forward pre-hook on an attention module sees the call's arguments: the
layer input ``hidden_states``, the rotary embedding ``position_embeddings = (cos, sin)``, the
``position_ids`` and the cache. From them this module computes queries and keys exactly as the
module does: ``q_proj``/``k_proj``, the norm variants (``q_norm``/``k_norm`` per head as in
Qwen-3, or over all heads at once as in OLMo-2) and the model's own ``apply_rotary_pos_emb``.

Two users, one implementation: ``kvviz.model.capture`` (attention maps of the layers being viewed)
and ``kvviz.runtime.policy_cache`` (the queries that attention-scored selectors need at each step).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch


class CaptureError(ValueError):
    """A capture that cannot be done: bad layer/head/window, or an attention this module cannot read."""


@dataclass
class AttentionCall:
    """The arguments of one attention call that queries and keys are computed from."""

    module: torch.nn.Module
    hidden: torch.Tensor  # (1, q_len, hidden_size), the layer input after its norm
    cos: torch.Tensor  # (1, q_len, rotary_dim)
    sin: torch.Tensor
    position_ids: torch.Tensor | None  # (1, q_len) the tokens' true positions, when the caller passes them

    @classmethod
    def read(cls, module, args: tuple, kwargs: dict) -> "AttentionCall":
        """From a pre-hook's ``(args, kwargs)``; raises CaptureError without a rotary embedding."""
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        embeddings = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
        if embeddings is None:
            raise CaptureError("The attention module got no position_embeddings; cannot apply RoPE.")
        cos, sin = embeddings
        return cls(module, hidden, cos, sin, kwargs.get("position_ids"))

    def queries(self) -> torch.Tensor:
        """(q_heads, q_len, head_dim), RoPE applied, in the model's dtype."""
        return self.batch_queries()[0]

    def batch_queries(self) -> torch.Tensor:
        """(batch, q_heads, q_len, head_dim), RoPE applied: every row of a batched forward."""
        q = project(self.module, self.hidden, "q_proj", "q_norm")
        return rope(self.module, q, self.cos, self.sin)

    def queries_and_keys(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q_heads, q_len, head_dim) and (kv_heads, q_len, head_dim), RoPE applied."""
        q = project(self.module, self.hidden, "q_proj", "q_norm")
        k = project(self.module, self.hidden, "k_proj", "k_norm")
        q, k = _rope_function(self.module)(q, k, self.cos, self.sin)
        return q[0], k[0]


def decoder_attention(model) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer, in order (not checked for projections)."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise CaptureError(f"{type(model).__name__}: no decoder layers found (expected model.model.layers).")
    return [getattr(layer, "self_attn", None) for layer in layers]


def attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer, in order; each must have separate
    ``q_proj`` and ``k_proj`` projections (what this module can read)."""
    mods = decoder_attention(model)
    for m in mods:
        if not readable(m):
            raise CaptureError(
                f"{type(model).__name__}: attention without q_proj/k_proj; kvviz can only read separate projections."
            )
    return mods


def readable(module) -> bool:
    return module is not None and hasattr(module, "q_proj") and hasattr(module, "k_proj")


def project(module, hidden: torch.Tensor, proj: str, norm: str) -> torch.Tensor:
    """q or k of ``module`` from its input. hidden: (batch, seq, hidden) -> (batch, heads, seq, head_dim)."""
    head_dim = module.head_dim
    x = getattr(module, proj)(hidden)  # (1, seq, heads * head_dim)
    normer = getattr(module, norm, None)
    if normer is not None and getattr(normer, "weight", None) is not None and normer.weight.numel() != head_dim:
        x = normer(x)  # OLMo-2 style: norm over all heads at once
        normer = None
    x = x.view(*hidden.shape[:-1], -1, head_dim)
    if normer is not None:
        x = normer(x)  # Qwen-3 style: per-head norm
    return x.transpose(1, 2)


def rope(module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The model's rotary embedding applied to x (batch, heads, seq, head_dim) alone."""
    rotated, _ = _rope_function(module)(x, x[:, :1], cos, sin)
    return rotated


def _rope_function(module):
    """The model's own apply_rotary_pos_emb (handles partial and interleaved variants)."""
    fn = getattr(sys.modules.get(type(module).__module__), "apply_rotary_pos_emb", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as fn
    return fn
