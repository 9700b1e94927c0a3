"""Decode steps replayed from a CUDA graph once every step keeps the cache's shapes.

A decode step of a 135M model launches hundreds of small kernels; on a GPU the time goes to
launching them from Python, and a policy's bookkeeping adds more. A step keeps every tensor's
shape in two cases, and the whole step (model forward, the policy's scoring and eviction, the
store's quantization or projection, the trace records) is then captured once and replayed:
- a selector that evicts at decode, once every layer holds exactly its budget: each step
  appends one entry and evicts one (any store composed with it keeps its shapes too);
- a cache that grows (full, SnapKV/PyramidKV after the prompt, a store on its own, a retriever,
  which evicts nothing), once its layers are held in fixed-capacity buffers
  (``kvviz.storage.fixed_capacity``), for stores that allow it. A retriever then chooses its read
  set among the buffers' slots in static shapes (``Retriever.read_fixed``: a fixed number of
  columns, those not read masked in an attention mask the step rewrites in place).

What makes the replay right:
- inputs are static device buffers (token, position) that are filled before each replay; the
  cache derives the step number it records from the position, on the device;
- the layers' state (every tensor of the store, found by walking its attributes, the positions,
  the policy stats) is copied back, inside the graph, into the tensors the step read, so the next
  replay reads the new state (fixed-capacity buffers are written in place: nothing to copy);
- Python counters that the capture advanced are put back, and advanced by hand per replay;
- the run's seeded CUDA generator is registered with the graph: each replay advances its
  Philox offset by what the captured draws take, as the same draws do eagerly, so a policy that
  draws at decode (``random``) draws what the eager steps draw.
Selectors opt in with ``graph_safe = True`` (no host reads, no per-step Python numbers in
tensor math; random draws only from the run's generator). Stores keep no Python counters that a
step advances.
"""

from __future__ import annotations

import threading
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

from kvviz.storage import fixed_capacity
from kvviz.runtime.policy_cache import PolicyCache
from kvviz.storage.fixed_capacity import get_path, set_path


# One capture at a time in the process: torch.cuda.graph synchronizes the device and empties the
# allocator's cache as it begins, which another thread's capture in progress must not see (runs on
# several lanes, kvviz.runtime.lanes, capture their graphs at about the same time).
_CAPTURE_LOCK = threading.Lock()
_capture_streams: dict[torch.device, torch.cuda.Stream] = {}
_building = threading.Event()  # set while the background builder (kvviz.runtime.fused) runs CUDA work


@contextmanager
def no_capture():
    """For the background builder of fused kernels: no graph is captured while it compiles and runs
    them (its allocations and syncs would break a capture in progress, or fail in it: "operation
    not permitted when stream is capturing"). A run that would capture meanwhile steps eagerly and
    captures at a later step: it never waits for the compiler."""
    with _CAPTURE_LOCK:
        _building.set()
        try:
            yield
        finally:
            _building.clear()


def _take_capture_lock() -> bool:
    """Take the capture lock: wait for another run's capture (a fraction of a second), not for a
    build; False while the builder holds it."""
    while not _CAPTURE_LOCK.acquire(timeout=0.05):
        if _building.is_set():
            return False
    return True


def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream graphs are captured on: a high-priority one, from another pool than the
    default-priority streams a lane or a warm-up takes (``torch.cuda.Stream()`` hands those out
    round robin from a shared pool, and torch.cuda.graph's own default capture stream is one of
    them: a lane given the same stream would run its work into another run's capture)."""
    if device not in _capture_streams:
        _capture_streams[device] = torch.cuda.Stream(device, priority=-1)
    return _capture_streams[device]


def usable(cache: PolicyCache, device: torch.device, sample: bool, model=None) -> bool:
    """Whether this run's decode steps can be replayed from a graph; asked after the prefill
    (a store's layout is known once it has been built)."""
    if device.type != "cuda" or sample:
        return False
    if cache.windows:  # the model's sliding windows: masked per KV head from the held positions, eagerly
        return False
    if cache.reader is not None and not cache.reader.graph_safe:
        return False  # a retriever's read set, chosen and gathered in static shapes when graph safe
    if cache.grows():
        return (model is None or fixed_capacity.supported(model)) and cache.can_hold_fixed()
    sel = cache.pipeline.selector
    return getattr(sel, "graph_safe", False) and all(b is not None for b in cache.layer_budgets)


def layer_state(layer) -> dict[tuple, torch.Tensor]:
    """The tensors a decode step reads and replaces: the store's, the positions, the stats (a
    fixed-capacity layer's buffers are written in place: nothing to copy back)."""
    return {path: get_path(layer, path) for path in layer.state_paths(fixed=False)}


class DecodeGraph:
    """Runs decode steps: the first eagerly on a side stream (warm-up), then captured and replayed."""

    def __init__(self, forward, cache: PolicyCache, device: torch.device):
        self.forward = forward  # forward(ids (1,1), positions (1,)) -> logits (1, 1, vocab)
        self.cache = cache
        self.device = device
        self.ids = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.warmed = False
        self.failure: str | None = None  # why capture failed (the run then goes on eagerly)

    def step(self, token: int, position: int) -> torch.Tensor | None:
        """logits (1, 1, vocab) of the step; None when the graph could not be captured (the
        cache is as before the step, and ``failure`` says why): the caller steps eagerly."""
        self.ids.fill_(token)
        self.positions.fill_(position)
        if self.graph is None:
            if not self.warmed:
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    logits = self.forward(self.ids, self.positions)
                torch.cuda.current_stream(self.device).wait_stream(side)
                self.warmed = True
                return logits
            if not _take_capture_lock():  # the builder is at work: this step eagerly, the capture later
                return self.forward(self.ids, self.positions)
            try:
                captured = self._capture()
            finally:
                _CAPTURE_LOCK.release()
            if not captured:
                return None
        assert self.graph is not None  # captured above (_capture() returned True)
        self.graph.replay()
        for layer in self.cache.layers:
            layer.seen += 1
        return self.logits

    def _capture(self) -> bool:
        """Capture one step (the capture lock held); False (state put back, ``failure`` set) when capture fails. Nothing
        captured ran, so the layers' state from before the step is still right. The capture is
        thread-local: other threads (another session of the app) may use CUDA meanwhile."""
        layers = self.cache.layers
        before = [layer_state(layer) for layer in layers]
        seen = [layer.seen for layer in layers]
        graph = torch.cuda.CUDAGraph()
        try:
            generator = self.cache.generator
            if generator is not None and generator.device.type == "cuda":
                graph.register_generator_state(generator)  # draws at decode advance it per replay
            with torch.cuda.graph(graph, stream=_capture_stream(self.device), capture_error_mode="thread_local"):
                self.logits = self.forward(self.ids, self.positions)
                for layer, old in zip(layers, before):
                    new = layer_state(layer)
                    if {p: t.shape for p, t in new.items()} != {p: t.shape for p, t in old.items()}:
                        raise RuntimeError("cache shapes changed during a step; this policy is not graph safe")
                    for path, o in old.items():
                        if new[path] is not o:
                            o.copy_(new[path])
            self.graph = graph
        except RuntimeError as exc:  # torch's CUDA errors are RuntimeErrors
            frames = traceback.extract_tb(exc.__traceback__)
            ours = [f for f in frames if "kvviz" in f.filename or "transformers" in f.filename]
            where = (ours or frames)[-1]  # the innermost frame of our code or the model's
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.failure = f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}: {first}"
            self.logits = None
        finally:
            for layer, old, s in zip(layers, before, seen):
                for path, tensor in old.items():
                    set_path(layer, path, tensor)
                layer.seen = s
        return self.graph is not None
