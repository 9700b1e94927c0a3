"""Memoized calls behind the Attention page: generation (through the engine), the overview pass,
a layer's queries and keys, and one head's view. Keys are plain values: the model's identity
(spec, device, dtype) and a digest of the token ids; the model object itself is never hashed.

The overview and layer captures live in ``st.cache_resource`` (no copy on each rerun: they may
hold a few hundred MB of queries and keys) and must be treated as read-only.

The model work (generation, a capture pass) holds a slot of the process's run queue (``queue_slot``
inside the memoized functions, so that a memoized answer never waits); the page says so while the
queue is busy (``queue_note``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st

from kvviz.attention import maps as attention_maps
from kvviz.model import capture
from kvviz.runtime import engine
from kvviz.attention.data import AttentionView, Overview
from kvviz.i18n import _
from kvviz.model.loading import LoadedModel
from kvviz.policies.spec import PolicySpec
from kvviz.record.trace import Trace
from kvviz.runtime.jobs import process_queue, queue_slot
from kvviz.ui.job_view import queue_note

KEEP_QK_BYTES = 512 << 20  # queries and keys the overview keeps, so a detail view needs no second pass
THUMB_CELLS = 32
SINK_TOKENS = 4
LOCAL_TOKENS = 16


def model_key(loaded: LoadedModel) -> tuple[str, str, str]:
    s = loaded.summary
    return (str(loaded.spec), str(s.device), str(s.dtype))


def ids_digest(ids) -> str:
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


@st.cache_data(max_entries=16, show_spinner=False)
def _generate(_loaded, key, prompt_ids: tuple, max_new_tokens: int, spec_text: str) -> Trace:
    with queue_slot(process_queue()):
        return engine.run(
            _loaded.model, _loaded.tokenizer, list(prompt_ids), PolicySpec.parse(spec_text),
            max_new_tokens=max_new_tokens, model_name=key[0], capture_queries=True,  # Trace.lost_mass for the page
        )


def generate(loaded: LoadedModel, prompt_ids, max_new_tokens: int, spec: PolicySpec) -> Trace:
    """Greedy generation of ``max_new_tokens`` under ``spec`` (the engine's Trace), measuring the
    attention lost to eviction at each step (``Trace.lost_mass``)."""
    with queue_note(_("Generating")):
        return _generate(loaded, model_key(loaded), tuple(int(i) for i in prompt_ids), int(max_new_tokens), spec.to_text())


@st.cache_resource(max_entries=2, show_spinner=False)
def _overview(_loaded, key, digest: str, _ids, prompt_len: int, pool: str) -> Overview:
    with queue_slot(process_queue()):
        return attention_maps.overview(
            _loaded.model, _ids, cells=THUMB_CELLS, pool=pool, sink_tokens=SINK_TOKENS, local_tokens=LOCAL_TOKENS,
            prompt_len=prompt_len, keep_qk_bytes=KEEP_QK_BYTES,
        )


def overview(loaded: LoadedModel, ids, prompt_len: int, pool: str) -> Overview:
    with queue_note(_("Attention maps")):
        return _overview(loaded, model_key(loaded), ids_digest(ids), list(ids), prompt_len, pool)


@st.cache_resource(max_entries=4, show_spinner=False)
def _layer_qk(_loaded, key, digest: str, _ids, layer: int, prompt_len: int) -> capture.LayerQK:
    with queue_slot(process_queue()):
        return capture.capture_layers(_loaded.model, _ids, [layer], prompt_len=prompt_len)[layer]


def layer_qk(loaded: LoadedModel, ids, layer: int, prompt_len: int, ov: Overview | None = None) -> capture.LayerQK:
    """The layer's queries and keys: from the overview when it kept them, else one more pass."""
    if ov is not None and layer in ov.qk:
        return ov.qk[layer]
    with queue_note(_("Layer {layer}'s attention").format(layer=layer)):
        return _layer_qk(loaded, model_key(loaded), ids_digest(ids), list(ids), layer, prompt_len)


@st.cache_data(max_entries=32, show_spinner=False)
def _view(_qk, key, digest: str, layer: int, head: int, q_range, k_range, max_cells: int, pool: str,
          evicted_bytes: bytes | None, prompt_len: int) -> AttentionView:
    evicted = None if evicted_bytes is None else np.frombuffer(evicted_bytes, dtype=bool)
    return attention_maps.attention_view(
        _qk, head, q_range=q_range, k_range=k_range, max_cells=max_cells, pool=pool, evicted=evicted, prompt_len=prompt_len,
    )


def view(loaded: LoadedModel, ids, qk: capture.LayerQK, head: int, *, q_range, k_range, max_cells: int, pool: str,
         evicted: np.ndarray | None, prompt_len: int) -> AttentionView:
    ev = None if evicted is None else np.asarray(evicted, dtype=bool).tobytes()
    return _view(qk, model_key(loaded), ids_digest(ids), qk.layer, head, tuple(q_range), tuple(k_range), max_cells, pool, ev, prompt_len)
