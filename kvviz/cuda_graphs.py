"""Decode steps replayed from a CUDA graph once a fixed-budget policy reaches its steady state.

A decode step of a 135M model launches hundreds of small kernels; on a GPU the time goes to
launching them from Python, and a policy's bookkeeping adds more. Once every layer holds exactly
its budget, each step appends one entry and evicts one, so every tensor keeps its shape: the
whole step (model forward, the policy's scoring and eviction, the trace records) can be captured
once and replayed.

What makes the replay right:
- inputs are static device buffers (token, position) that are filled before each replay; the
  cache derives the step number it records from the position, on the device;
- the layers' state (keys, values, positions, policy stats) is copied back, inside the graph,
  into the tensors the step read, so the next replay reads the new state;
- Python counters that the capture advanced are put back, and advanced by hand per replay.
Selectors opt in with ``graph_safe = True`` (no host reads, no per-step Python numbers in
tensor math, no random draws at decode).
"""

from __future__ import annotations

import traceback
from pathlib import Path

import torch

from kvviz.cache import PolicyCache


def usable(cache: PolicyCache, device: torch.device, sample: bool) -> bool:
    sel = cache.pipeline.selector
    return (
        device.type == "cuda"
        and not sample
        and sel is not None
        and getattr(sel, "graph_safe", False)
        and cache.pipeline.storage is None
        and all(b is not None for b in cache.layer_budgets)
    )


def _state(layer) -> list[torch.Tensor]:
    return [layer.store.keys, layer.store.values, layer.positions, *layer.stats.values()]


def _set_state(layer, tensors: list[torch.Tensor]) -> None:
    layer.store.keys, layer.store.values, layer.positions = tensors[:3]
    for name, t in zip(list(layer.stats), tensors[3:]):
        layer.stats[name] = t


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
        if self.graph is not None:
            self.graph.replay()
            for layer in self.cache.layers:
                layer.seen += 1
            return self.logits
        if not self.warmed:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                logits = self.forward(self.ids, self.positions)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.warmed = True
            return logits
        if not self._capture():
            return None
        self.graph.replay()
        for layer in self.cache.layers:
            layer.seen += 1
        return self.logits

    def _capture(self) -> bool:
        """Capture one step; False (state put back, ``failure`` set) when capture fails. Nothing
        captured ran, so the layers' state from before the step is still right. The capture is
        thread-local: other threads (another session of the app) may use CUDA meanwhile."""
        layers = self.cache.layers
        before = [_state(layer) for layer in layers]
        seen = [layer.seen for layer in layers]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.logits = self.forward(self.ids, self.positions)
                for layer, old in zip(layers, before):
                    new = _state(layer)
                    if [t.shape for t in new] != [t.shape for t in old]:
                        raise RuntimeError("cache shapes changed during a step; this policy is not graph safe")
                    for o, n in zip(old, new):
                        o.copy_(n)
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
                _set_state(layer, old)
                layer.seen = s
        return self.graph is not None
