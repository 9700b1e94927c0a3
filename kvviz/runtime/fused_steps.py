"""A policy's decode step fused: one layer's cache update, compiled by torch in the background.

``kvviz.runtime.fused`` compiles the model's pure blocks; what a policy adds to a decode step
stays dozens of small kernels per layer (H2O: the new query's attention over the held entries,
the running sums, the protected window, top-k, the gathers of keys, values, positions and stats,
the trace's records; KIVI: quantizing the new token and dequantizing the buffers). Here
``PolicyLayer.step`` itself, the cache's own code, is compiled by ``torch.compile`` (inductor,
static shapes, one graph) for the steps whose shapes repeat:
- a selector that evicts at decode, once the layer holds its budget (one entry in, one out);
- a layer held at a fixed capacity (a growing cache, a store, a retriever's read set).
A step captured in a CUDA graph then replays those fused kernels.

How one compiled graph serves every layer and every step: the step runs on a *template*, a copy
of the layer whose Python numbers are fixed (the tokens seen, the layer's index, its row in the
trace's records) and whose tensors are the real layer's, swapped in before the call and handed
back after it. A selector that may be replayed from a CUDA graph (``graph_safe``) uses no
per-step Python number in its tensor math, which is what makes a step at one ``seen`` stand for
every later one (the same holds for a captured graph). Layers whose decode steps differ (their
budget, ``Selector.layer_kind``) get a template each.

The app never waits for the compiler, as with the blocks: a step whose graph is not built yet runs
eagerly and asks the background builder (``kvviz.runtime.fused``'s thread) to compile it on a copy
of the layer. ``trace.timings["fused_steps"]`` says how a run's steady steps ran: "all", "some",
"building", or why not.
"""

from __future__ import annotations

import copy
import os
import threading

import torch

from kvviz.runtime import fused
from kvviz.runtime.policy_cache import PolicyCache, PolicyLayer
from kvviz.storage.fixed_capacity import get_path, set_path

_lock = threading.Lock()
_compiled = None
_ready: set[tuple] = set()  # signatures built
_asked: set[tuple] = set()
_failed: dict[tuple, str] = {}  # signature -> why its build failed (the step then stays eager)


def backend() -> str:
    """torch.compile's backend: inductor, or ``KVVIZ_FUSED_BACKEND`` (tests use "aot_eager", which
    traces the same graph without generating code)."""
    return os.environ.get("KVVIZ_FUSED_BACKEND", "inductor")


def by_default() -> bool:
    """Whether a fused run (``DecodeOptions.fused``) fuses its policy steps too (``KVVIZ_FUSED_STEPS=0``:
    only the model's blocks)."""
    return os.environ.get("KVVIZ_FUSED_STEPS", "1") != "0"


def _body(template: PolicyLayer, keys, values, positions, queries, paths: tuple):
    """The layer's step; then every state tensor it replaced by one of the same shape and dtype is
    written back into the tensor it replaced (a held budget's gathers write straight into the
    layer's buffers, and a captured CUDA graph has nothing left to copy back)."""
    before = [_tensor(template, p) for p in paths]
    out = PolicyLayer.step(template, keys, values, positions, queries)
    for path, old in zip(paths, before):
        new = _tensor(template, path)
        if new is not old and new.shape == old.shape and new.dtype == old.dtype:
            old.copy_(new)
            set_path(template, path, old)
    return out


def _compiled_step():
    global _compiled
    with _lock:
        if _compiled is None:
            name = backend()
            options = fused.COMPILE_OPTIONS if name == "inductor" else None
            _compiled = torch.compile(_body, backend=name, fullgraph=True, dynamic=False, options=options)
        return _compiled


def record_names(rec) -> list[str]:
    """The tensors of a RunRecords: one row per layer of its device, each."""
    return [name for name, value in vars(rec).items() if isinstance(value, torch.Tensor)]


class Template:
    """A layer's stand-in for compiled steps: a copy whose tensors are swapped for a layer's."""

    def __init__(self, layer: PolicyLayer, clone: bool = False):
        cache = layer.owner
        rec, row = cache.record_slot[layer.layer_idx]
        self.records = copy.copy(rec)  # its tensors: the stepped layer's rows, swapped in per call
        owner = copy.copy(cache)
        owner.record_slot = [(self.records, 0)] * cache.n_layers
        owner.records = [self.records]
        self.paths = tuple(layer.state_paths())
        memo: dict = {id(cache): owner}
        if not clone:  # the same tensors (swapped per call); a clone (a background build's example) copies them
            memo.update({id(get_path(layer, p)): get_path(layer, p) for p in self.paths})
        self.layer = copy.deepcopy(layer, memo)
        self.layer.seen = cache.prompt_len + 1  # a decode step's (graph-safe steps use no per-step number)
        self.layer.mix = None
        if clone:
            for name in record_names(rec):
                setattr(self.records, name, getattr(rec, name)[row : row + 1].clone())

    def load(self, layer: PolicyLayer) -> None:
        """Swap in ``layer``'s tensors and its rows of the trace's records."""
        for path in self.paths:
            set_path(self.layer, path, get_path(layer, path))
        rec, row = layer.owner.record_slot[layer.layer_idx]
        for name in record_names(rec):
            setattr(self.records, name, getattr(rec, name)[row : row + 1])
        self.layer.seen = layer.owner.prompt_len + 1
        self.layer.mix = None

    def hand_back(self, layer: PolicyLayer, q_len: int) -> None:
        """What the step replaced goes to ``layer``; its Python counters advance as the step's would."""
        for path in self.paths:
            new = get_path(self.layer, path)
            if new is not get_path(layer, path):
                set_path(layer, path, new)
        layer.seen += q_len
        layer.mix, layer.last_read_bytes = self.layer.mix, self.layer.last_read_bytes


def _tensor(layer: PolicyLayer, path: tuple) -> torch.Tensor:
    t = get_path(layer, path)
    assert isinstance(t, torch.Tensor)  # a path of state_paths
    return t


def _signature(layer: PolicyLayer, keys, queries) -> tuple:
    """What a compiled step is specialized on: the policy and its parameters, the layer's kind and
    budget, every tensor's shape and dtype, the prompt's length (the records' step origin)."""
    cache = layer.owner
    sel = cache.pipeline.selector
    tensors = tuple((p, tuple(t.shape), t.dtype) for p in layer.state_paths() for t in [_tensor(layer, p)])
    rec, _row = cache.record_slot[layer.layer_idx]
    return (
        repr(sel), repr(cache.pipeline.storage), repr(cache.pipeline.reader),
        cache.layer_budgets[layer.layer_idx],
        tuple(p.layer_kind(layer.layer_idx) for p in (sel, cache.pipeline.reader) if p is not None),
        tensors, tuple(tuple(getattr(rec, n).shape) for n in record_names(rec)), cache.prompt_len, cache.measure_lost_mass,
        tuple(keys.shape), keys.dtype, str(keys.device), None if queries is None else tuple(queries.shape),
        torch.is_inference_mode_enabled(),
    )


def repeats(layer: PolicyLayer, q_len: int) -> bool:
    """Whether this step has the shapes of every later one: one new token into a layer held at a
    fixed capacity, or into a layer that holds its budget under a selector that evicts at decode."""
    if q_len != 1 or layer.seen == 0:
        return False
    if layer.fixed is not None:
        return len(layer) + 1 <= layer.fixed.capacity
    cache = layer.owner
    sel = cache.pipeline.selector
    budget = cache.layer_budgets[layer.layer_idx]
    return sel is not None and not cache.grows() and budget is not None and len(layer) == budget


class Steps:
    """One run's fused policy steps (attach as ``PolicyCache.fused_steps``)."""

    def __init__(self, cache: PolicyCache):
        self.cache = cache
        self.templates: dict[tuple, Template] = {}
        self.fused = self.eager = 0  # steps of a layer, fused or not, among those whose shapes repeat
        self.failure: str | None = None

    def step(self, layer: PolicyLayer, keys, values, positions, queries):
        """The layer's step, fused when built; None when this step is not fused (the caller steps)."""
        if not self.usable() or not repeats(layer, keys.shape[2]):
            return None
        sig = _signature(layer, keys, queries)
        if sig in _failed:
            self.failure = _failed[sig]
            self.eager += 1
            return None
        if sig not in _ready:
            self.eager += 1
            if sig not in _asked and not fused._capturing():
                _asked.add(sig)
                example = (Template(layer, clone=True), tuple(t.clone() if t is not None else None for t in (keys, values, positions, queries)))
                if keys.is_cuda:
                    torch.cuda.current_stream().synchronize()  # the copies exist before the builder's stream reads them
                fused.ask(_Build(sig), sig, example)
            return None
        template = self.templates.get(sig)
        if template is None:
            template = self.templates[sig] = Template(layer)
        template.load(layer)
        out = _compiled_step()(template.layer, keys, values, positions, queries, template.paths)
        template.hand_back(layer, keys.shape[2])
        self.fused += 1
        return out

    def usable(self) -> bool:
        sel = self.cache.pipeline.selector
        reader = self.cache.reader
        return (sel is None or getattr(sel, "graph_safe", False) or not sel.acts_at_decode) and (
            reader is None or reader.graph_safe)

    def state(self) -> str:
        """How the run's steps whose shapes repeat ran: "all", "some", "building", "none" (no such
        step), or why not ("failed: ...")."""
        if self.failure and not self.fused:
            return f"failed: {self.failure}"
        if not (self.fused or self.eager):
            return "none"
        return "all" if not self.eager else "some" if self.fused else "building"


class _Build:
    """A background build of one signature (``kvviz.runtime.fused``'s builder calls it)."""

    def __init__(self, sig: tuple):
        self.sig, self.failure = sig, None

    def build(self, key: tuple, example: tuple) -> None:
        template, (keys, values, positions, queries) = example
        stream = torch.cuda.Stream(keys.device) if keys.is_cuda else None
        with torch.inference_mode(), torch.cuda.stream(stream):
            _compiled_step()(template.layer, keys, values, positions, queries, template.paths)
            if stream is not None:
                stream.synchronize()
        _ready.add(key)

    def fail(self, key: tuple, why: str) -> None:
        _failed[key] = why


def wait() -> None:
    fused.wait()
