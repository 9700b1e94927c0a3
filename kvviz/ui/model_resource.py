"""One copy of each model per process, shared by every browser session.

``st.cache_resource`` holds a small store of loaded models; ``get_model()`` loads into it with a
progress bar the first time a (spec, device, dtype) is asked for, and returns the stored one after.
Loading happens outside the cached function so that the progress bar is not replayed on hits.

``warm_start()`` loads the default model on a background thread, once per process: the home page
calls it before it draws anything and imports nothing heavy (torch, transformers) until the model
is there, so that it is on the screen within a second or two of a server start while the model
loads behind it. This module imports torch only when a model is asked for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import streamlit as st

from kvviz.i18n import _

if TYPE_CHECKING:
    from kvviz.model.loading import LoadedModel

log = logging.getLogger(__name__)

MAX_MODELS = 2  # the current model and the previous one (kept so that a switch back is instant)

ModelKey = tuple[str, str, str]  # (spec, resolved device or ALL_GPUS, dtype name)
ALL_GPUS = "all GPUs"  # the device choice that splits the model across the host's GPUs (device_map auto)


class _ModelStore:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # one load at a time, across sessions
        self.models: OrderedDict[ModelKey, LoadedModel] = OrderedDict()
        self.warm_start: threading.Thread | None = None  # the background load of the default model

    def get(self, key: ModelKey) -> LoadedModel | None:
        loaded = self.models.get(key)
        if loaded is not None:
            self.models.move_to_end(key)
        return loaded

    def put(self, key: ModelKey, loaded: LoadedModel) -> None:
        self.models[key] = loaded
        self.models.move_to_end(key)
        while len(self.models) > MAX_MODELS:
            self.models.popitem(last=False)


@st.cache_resource(show_spinner=False)
def _model_store() -> _ModelStore:
    return _ModelStore()


def warm_start() -> threading.Thread:
    """The background load of the default model (auto device and dtype), started on the first
    call in the process; a failure is left for the sidebar to meet and explain."""
    store = _model_store()
    with _WARM_START_LOCK:
        if store.warm_start is None:
            store.warm_start = threading.Thread(target=_load_default, args=(store,), name="kvviz-warm-start", daemon=True)
            store.warm_start.start()
    return store.warm_start


def wait_for_warm_start(note: str, poll_s: float = 0.25) -> None:
    """Wait for ``warm_start()``, showing ``note`` with the seconds waited. The wait calls
    Streamlit every ``poll_s``, so that a click elsewhere on the page (a page link) interrupts it."""
    thread = warm_start()
    if not thread.is_alive():
        return
    started = time.monotonic()
    with st.empty():
        while thread.is_alive():
            st.caption(_("{note} ({s} s)").format(note=note, s=f"{time.monotonic() - started:.0f}"))
            thread.join(poll_s)
        st.empty()


_WARM_START_LOCK = threading.Lock()


def _load_default(store: _ModelStore) -> None:
    from kvviz.model.loading import default_model_spec, load_model

    try:
        key = model_key(default_model_spec())
        with store.lock:
            if store.get(key) is None:
                store.put(key, load_model(*key))
    except Exception as exc:  # the sidebar loads it again in the page, and shows why it fails
        log.info("warm start: the default model did not load: %s", exc)


def model_key(spec: str, device: str = "auto", dtype: str = "auto") -> ModelKey:
    """Normalize a request, so that "auto" and the device it picks share one loaded model."""
    from kvviz.model.loading import pick_device, pick_device_map, pick_dtype

    if device == ALL_GPUS:
        pick_device_map("auto")  # refused here without CUDA or accelerate
        return (spec.strip(), ALL_GPUS, str(pick_dtype("cuda", dtype)).replace("torch.", ""))
    resolved = pick_device(device)
    return (spec.strip(), resolved, str(pick_dtype(resolved, dtype)).replace("torch.", ""))


def get_model(spec: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """The loaded model for this request; raises kvviz.model.loading.ModelLoadError."""
    store = _model_store()
    key = model_key(spec, device, dtype)
    loaded = store.get(key)
    if loaded is not None:
        return loaded
    if not store.lock.acquire(blocking=False):
        with st.spinner(_("Another session is loading a model; waiting for it...")):
            store.lock.acquire()
    try:
        loaded = store.get(key)  # loaded by the session we waited for?
        if loaded is None:
            loaded = _load_with_progress(key)
            store.put(key, loaded)
        return loaded
    finally:
        store.lock.release()


def _load_with_progress(key: ModelKey) -> LoadedModel:
    from kvviz.model.loading import load_model

    spec, device, dtype = key
    bar = st.progress(0.0, text=_("Loading {spec} ...").format(spec=spec))

    def progress(message: str, fraction: float) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=message)

    try:
        with st.spinner(_(
            "Loading the model, once for this process. A GGUF file is dequantized on its first load "
            "(about 20 s for SmolLM2); later starts reuse kvviz's weights cache."
        )):
            if device == ALL_GPUS:
                return load_model(spec, device="cuda", dtype=dtype, progress=progress, device_map="auto")
            return load_model(spec, device=device, dtype=dtype, progress=progress)
    finally:
        bar.empty()
