"""Queries and keys of the layers being viewed, read out of the model with forward pre-hooks.

Asking transformers for ``output_attentions`` materializes every layer's full attention matrix:
at 8k tokens that is tens of GB. kvviz instead runs the model once with forward pre-hooks on the
attention modules it needs, takes each layer's input (``hidden_states``) and rotary embedding
(``cos, sin``), and computes the queries and keys itself (``q_proj``, ``k_proj``, RoPE);
``kvviz.attention_maps`` turns them into attention maps and statistics.

* ``capture_layers(model, ids, layers)``: the queries and keys (RoPE applied) of some layers, from
  one forward pass stopped after the deepest of them.

Sequences are the full id sequence a run saw: the prompt and the generated tokens after it
(``prompt_len`` marks the boundary); a query at position i sees keys 0..i.

The model is shared between sessions and threads: hooks are attached for one pass, act only on
the thread that attached them, and are removed in a ``finally``. This module never imports
streamlit.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch


class CaptureError(ValueError):
    """A capture that cannot be done: bad layer/head/window, or an attention this module cannot read."""


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class LayerQK:
    """Queries and keys of one layer, RoPE applied, exactly as the attention sees them."""

    layer: int
    q: torch.Tensor  # (n_q_heads, seq, head_dim), the model's dtype and device
    k: torch.Tensor  # (n_kv_heads, seq, head_dim)
    scaling: float  # multiplies q·k (1/sqrt(head_dim) for Llama)
    sliding_window: int | None = None  # a query sees only the last ``sliding_window`` keys
    softcap: float | None = None  # Gemma-2 style tanh capping of the logits
    prompt_len: int | None = None

    @property
    def n_q_heads(self) -> int:
        return self.q.shape[0]

    @property
    def n_kv_heads(self) -> int:
        return self.k.shape[0]

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA); query head h reads KV head h // group_size."""
        return self.n_q_heads // self.n_kv_heads

    @property
    def seq_len(self) -> int:
        return self.q.shape[1]

    def kv_head(self, head: int) -> int:
        return head // self.group_size

    def nbytes(self) -> int:
        return self.q.numel() * self.q.element_size() + self.k.numel() * self.k.element_size()


# ---------------------------------------------------------------------------------------------
# reading queries and keys out of the model


class _StopForward(Exception):
    """Raised by the last hook of a pass: the layers after it are not needed."""


def attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer, in order."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise CaptureError(f"{type(model).__name__}: no decoder layers found (expected model.model.layers).")
    mods = [getattr(layer, "self_attn", None) for layer in layers]
    for m in mods:
        if m is None or not hasattr(m, "q_proj") or not hasattr(m, "k_proj"):
            raise CaptureError(
                f"{type(model).__name__}: attention without q_proj/k_proj; kvviz can only read separate projections."
            )
    return mods


def _rope_function(module):
    """The model's own apply_rotary_pos_emb (handles partial and interleaved variants)."""
    fn = getattr(sys.modules.get(type(module).__module__), "apply_rotary_pos_emb", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as fn
    return fn


def _project(module, hidden: torch.Tensor, proj: str, norm: str) -> torch.Tensor:
    """q or k of ``module`` from its input. hidden: (1, seq, hidden) -> (1, heads, seq, head_dim)."""
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


def _layer_qk(module, layer: int, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> LayerQK:
    q = _project(module, hidden, "q_proj", "q_norm")
    k = _project(module, hidden, "k_proj", "k_norm")
    q, k = _rope_function(module)(q, k, cos, sin)
    cfg = getattr(module, "config", None)
    window = getattr(module, "sliding_window", None)
    return LayerQK(
        layer=layer,
        q=q[0].contiguous(),
        k=k[0].contiguous(),
        scaling=float(getattr(module, "scaling", module.head_dim**-0.5)),
        sliding_window=int(window) if isinstance(window, int) and window > 0 else None,
        softcap=getattr(cfg, "attn_logit_softcapping", None) if cfg is not None else None,
    )


def _ids_tensor(ids, device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(ids, dtype=np.int64) if not isinstance(ids, torch.Tensor) else ids)
    t = t.reshape(1, -1).to(device)
    if t.shape[1] == 0:
        raise CaptureError("No tokens to capture.")
    return t


def _run_with_hooks(model, ids, layers: Sequence[int], on_layer) -> None:
    """One forward pass of ``ids``; ``on_layer(layer, LayerQK)`` for each layer in ``layers``, in
    order; the pass stops after the deepest one. Hooks act only on this thread and are removed."""
    mods = attention_modules(model)
    wanted = sorted(set(int(l) for l in layers))
    if not wanted:
        return
    if wanted[0] < 0 or wanted[-1] >= len(mods):
        raise CaptureError(f"Layer out of range: the model has layers 0..{len(mods) - 1}.")
    owner = threading.get_ident()
    last = wanted[-1]

    def make_hook(layer):
        def hook(module, args, kwargs=None):
            # kwargs is None only in the instant another thread registers or removes its hooks
            if kwargs is None or threading.get_ident() != owner:
                return None  # another session's run on the shared model
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            pe = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
            if pe is None:
                raise CaptureError("The attention module got no position_embeddings; cannot apply RoPE.")
            cos, sin = pe
            on_layer(layer, _layer_qk(module, layer, hidden, cos, sin))
            if layer == last:
                raise _StopForward()
            return None

        return hook

    device = next(model.parameters()).device
    input_ids = _ids_tensor(ids, device)
    positions = torch.arange(input_ids.shape[1], device=device)[None]
    base = getattr(model, "model", model)
    handles = []
    try:
        for layer in wanted:
            handles.append(mods[layer].register_forward_pre_hook(make_hook(layer), with_kwargs=True))
        with torch.inference_mode():
            base(input_ids=input_ids, position_ids=positions, use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


def capture_layers(model, ids, layers: Iterable[int], prompt_len: int | None = None) -> dict[int, LayerQK]:
    """Queries and keys (RoPE applied) of ``layers``, from one forward pass of ``ids`` (the whole
    sequence: prompt then generated tokens) that stops after the deepest layer asked for."""
    out: dict[int, LayerQK] = {}

    def keep(layer, qk):
        qk.prompt_len = prompt_len
        out[layer] = qk

    _run_with_hooks(model, ids, list(layers), keep)
    return out
