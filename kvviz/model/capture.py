"""Queries and keys of the layers being viewed, read out of the model with forward pre-hooks.

Asking transformers for ``output_attentions`` materializes every layer's full attention matrix:
at 8k tokens that is tens of GB. kvviz instead runs the model once with forward pre-hooks on the
attention modules it needs and computes each layer's queries and keys from the call's arguments
(``kvviz.model.attention_inputs``, shared with the PolicyCache); ``kvviz.attention.maps`` turns them
into attention maps and statistics.

* ``capture_layers(model, ids, layers)``: the queries and keys (RoPE applied) of some layers, from
  one forward pass stopped after the deepest of them.

Sequences are the full id sequence a run saw: the prompt and the generated tokens after it
(``prompt_len`` marks the boundary); a query at position i sees keys 0..i.

The model is shared between sessions and threads: hooks are attached for one pass, act only on
the thread that attached them, and are removed in a ``finally``. This module never imports
streamlit.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from kvviz.i18n import N_, _
from kvviz.model import devices
from kvviz.model.attention_inputs import AttentionCall, CaptureError, attention_modules, decoder_attention  # noqa: F401  (attention_modules re-exported)


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


SINKS_REFUSAL = N_("attention with learned sinks (gpt-oss): each row gives the sink a share that kvviz's attention "
                   "maps do not draw, so they are not shown for this model.")


def _layer_qk(call: AttentionCall, layer: int) -> LayerQK:
    module = call.module
    if getattr(module, "sinks", None) is not None:
        raise CaptureError(_("Layer {layer}: {why}").format(layer=layer, why=_(SINKS_REFUSAL)))
    q, k = call.queries_and_keys()
    cfg = getattr(module, "config", None)
    return LayerQK(
        layer=layer,
        q=q.contiguous(),
        k=k.contiguous(),
        scaling=float(getattr(module, "scaling", q.shape[-1] ** -0.5)),
        sliding_window=sliding_window(module, layer),
        softcap=getattr(cfg, "attn_logit_softcapping", None) if cfg is not None else None,
    )


def sliding_window(module, layer: int) -> int | None:
    """The keys a query of this layer sees at most, or None: the module's own ``sliding_window``
    (Gemma, SmolLM-3, gpt-oss), else the config's for a sliding layer (Mistral, Qwen-2)."""
    if hasattr(module, "sliding_window"):
        window = module.sliding_window
    else:
        cfg = getattr(module, "config", None)
        kinds = getattr(cfg, "layer_types", None)
        window = getattr(cfg, "sliding_window", None)
        if kinds is not None and kinds[layer] != "sliding_attention":
            window = None
        if getattr(cfg, "use_sliding_window", True) is False:
            window = None
    return int(window) if isinstance(window, int) and window > 0 else None


def _ids_tensor(ids, device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(ids, dtype=np.int64) if not isinstance(ids, torch.Tensor) else ids)
    t = t.reshape(1, -1).to(device)
    if t.shape[1] == 0:
        raise CaptureError(_("No tokens to capture."))
    return t


def _run_with_hooks(model, ids, layers: Sequence[int], on_layer) -> None:
    """One forward pass of ``ids``; ``on_layer(layer, LayerQK)`` for each layer in ``layers``, in
    order; the pass stops after the deepest one. Hooks act only on this thread and are removed."""
    mods = attention_modules(model)
    wanted = sorted(set(int(l) for l in layers))
    if not wanted:
        return
    if wanted[0] < 0 or wanted[-1] >= len(mods):
        raise CaptureError(_("Layer out of range: the model has layers 0..{last}.").format(last=len(mods) - 1))
    owner = threading.get_ident()
    last = wanted[-1]

    def make_hook(layer):
        def hook(module, args, kwargs=None):
            # kwargs is None only in the instant another thread registers or removes its hooks
            if kwargs is None or threading.get_ident() != owner:
                return None  # another session's run on the shared model
            on_layer(layer, _layer_qk(AttentionCall.read(module, args, kwargs), layer))
            if layer == last:
                raise _StopForward()
            return None

        return hook

    device = devices.input_device(model)  # a model split across GPUs takes its ids on the embedding's
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


def sliding_windows(model) -> dict[int, int]:
    """Layer -> its sliding window, for the layers that have one."""
    try:
        mods = decoder_attention(model)
    except (CaptureError, ValueError, AttributeError):
        return {}
    windows = {i: sliding_window(m, i) for i, m in enumerate(mods) if m is not None}
    return {i: w for i, w in windows.items() if w}
