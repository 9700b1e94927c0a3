"""Several runs at once on one GPU, each on its own thread and CUDA stream ("lanes").

A decode step of a small model leaves most of a GPU idle: hundreds of tiny kernels, each on a few
of the card's multiprocessors, one after another. Runs that do not wait for each other (a sweep's
points; the Live page's policy run beside the full cache's) overlap on the card when each is
launched from its own thread onto its own CUDA stream: while one run's kernel occupies a few
multiprocessors, another run's kernel takes others. Each run's steps are still its own (its cache,
its CUDA graph, its stream; the engine waits for its own stream only), so a run gives what it gives
alone.

- ``count(model)``: how many runs go at once: ``KVVIZ_LANES`` (default 4) for a model on one
  CUDA device, 1 on a CPU (two cores gain nothing) or a model split across devices;
- ``own_stream(model)``: the calling thread's work goes to a new CUDA stream (no-op on a CPU);
- ``in_order(fn, items, n)``: ``fn`` over ``items`` on ``n`` lanes, results in the items' order;
- ``TokenFeed``: the tokens of a run in progress, for a teacher-forced run that follows it step by
  step on another lane (the Live page's third run follows the full cache's as it generates).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

import torch

from kvviz.model import devices

T = TypeVar("T")
R = TypeVar("R")
DEFAULT_LANES = 4


def count(model) -> int:
    """Runs at once on ``model``: ``KVVIZ_LANES`` (default 4) on one CUDA device, else 1."""
    used = devices.run_devices(model)
    if used[0].type != "cuda" or devices.is_split(used):
        return 1
    try:
        return max(1, int(os.environ.get("KVVIZ_LANES", DEFAULT_LANES)))
    except ValueError:
        return DEFAULT_LANES


def live_at_once() -> bool:
    """Whether the Live comparison's three runs go at once (``KVVIZ_LIVE_LANES=1``; off by default:
    on an H200 two attempts in three failed with "operation not permitted when stream is
    capturing", a lane's stream synchronized while another lane captured its graph; the sweep's
    teacher-forced lanes did not). A likely cause: torch's caching allocator lets another thread's
    allocations record or poll events of a thread-local capture (pytorch/pytorch#193982); holding
    the other lanes' steps while a graph is captured is what to try next, on a GPU."""
    return os.environ.get("KVVIZ_LIVE_LANES", "0") == "1"


@contextmanager
def own_stream(model):
    """Run the block's CUDA work on a stream of its own (the caller's thread); no-op off CUDA."""
    device = devices.input_device(model)
    if device.type != "cuda":
        yield
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))  # what the caller queued before comes first
    with torch.cuda.stream(stream):
        yield
    stream.synchronize()


def on_own_stream(model, fn: Callable[[], R]) -> R:
    with own_stream(model):
        return fn()


def in_order(model, fn: Callable[[T], R], items: Iterable[T], n: int) -> Iterator[R]:
    """``fn(item)`` for each item, ``n`` at a time on their own threads and streams, yielded in the
    items' order as each is ready; ``n`` 1: one after another on the caller's thread. A consumer
    that stops iterating cancels what has not started (what runs finishes)."""
    items = list(items)
    if n <= 1:
        for item in items:
            yield fn(item)
        return
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="kvviz-lane") as pool:
        futures = [pool.submit(on_own_stream, model, lambda item=item: fn(item)) for item in items]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


class TokenFeed:
    """The tokens of a run in progress, one per step, and its log-probabilities once it ends: what a
    teacher-forced run on another lane reads as they come (``DecodeOptions.forced_feed``)."""

    def __init__(self):
        self._tokens: list[int] = []
        self._done = False
        self._logprobs: torch.Tensor | None = None
        self._cond = threading.Condition()

    def put(self, token: int) -> None:
        with self._cond:
            self._tokens.append(int(token))
            self._cond.notify_all()

    def close(self, logprobs: torch.Tensor | None = None) -> None:
        """The run ended (``logprobs`` (steps, vocab) when it finished; None when it failed or stopped)."""
        with self._cond:
            if not self._done:
                self._done, self._logprobs = True, logprobs
            self._cond.notify_all()

    def has(self, step: int) -> bool:
        """Whether the run gives a token at ``step``: waits until it does or ends."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._tokens) > step or self._done)
            return len(self._tokens) > step

    def get(self, step: int) -> int | None:
        """The token of ``step`` (waits for it); None when the run ended before it."""
        return self._tokens[step] if self.has(step) else None

    def logprobs(self) -> torch.Tensor | None:
        """The run's (steps, vocab) log-probabilities, once it ended (waits); None if it did not finish."""
        with self._cond:
            self._cond.wait_for(lambda: self._done)
            return self._logprobs
