"""A sweep's runs spread over workers: local worker processes (``--workers N``) or Ray actors
(``--ray [ADDRESS]``), each loading the model once. The rows equal an in-process sweep's (same
order, same numbers; only the ``seconds`` column is each run's own wall time).

The plan is made by a worker (the caller needs no model); for the ppl task the full-cache
reference runs first and its log-probabilities go to every later run. At most one run is in
flight per worker; a stop sets every worker's stop flag (the run in progress ends at its next
token) and nothing more is started: the result keeps the rows finished before, in plan order.
Ray is optional (``pip install kvviz[ray]``); nothing here imports it unless asked.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from kvviz.runtime.jobs import Stopped
from kvviz.sweep import run as sweep


@dataclass(frozen=True)
class Loader:
    """How a worker loads its model (the CLI's --model/--device/--dtype): picklable."""

    model: str | None = None
    device: str | None = None
    dtype: str | None = None

    def __call__(self):
        from kvviz.model.loading import quiet_transformers
        from kvviz.model.loading import load_model

        quiet_transformers()
        return load_model(self.model, device=self.device, dtype=self.dtype)


class SweepWorker:
    """One worker: the model loaded once; plans and runs single points of a sweep."""

    def __init__(self, loader: Callable, threads: int = 0):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.loaded = loader()
        self.stop_flag = threading.Event()

    def should_stop(self) -> bool:
        return self.stop_flag.is_set()

    def stop(self) -> None:
        self.stop_flag.set()

    def describe(self) -> tuple[str, str, str, int | None]:
        model = self.loaded.model
        return (self.loaded.summary.name, str(next(model.parameters()).device), str(model.dtype).replace("torch.", ""),
                self.loaded.summary.max_context)

    def plan(self, settings: sweep.SweepSettings, max_context: int | None) -> sweep.Plan:
        return sweep.plan(self.loaded.tokenizer, settings, max_context=max_context)

    def run(self, the_plan: sweep.Plan, index: int, reference_logprobs=None):
        """(row or reference dict, reference log-probs or None); None when stopped."""
        try:
            return sweep.run_one(
                self.loaded.model, self.loaded.tokenizer, the_plan, index, reference_logprobs,
                should_stop=self.should_stop, model_name=self.loaded.summary.name,
            )
        except Stopped:
            return None


# ------------------------------------------------------------------------------ local processes

_PROCESS_WORKER: dict = {}


def _init_process(loader, threads, stop_event) -> None:
    worker = SweepWorker(loader, threads)
    worker.stop_flag = stop_event  # shared with the caller: one set stops every worker
    _PROCESS_WORKER["w"] = worker


def _in_process(method: str, *args):
    return getattr(_PROCESS_WORKER["w"], method)(*args)


class _LocalPool:
    def __init__(self, loader, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")  # torch and fork do not mix
        self.stop_event = ctx.Event()
        threads = max(1, (os.cpu_count() or 1) // workers)
        self.size = workers
        self.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_process, initargs=(loader, threads, self.stop_event))

    def call(self, method: str, *args):
        return self.pool.submit(_in_process, method, *args)

    def wait(self, handles, timeout: float):
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return [(h, h.result()) for h in done]

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------ Ray


class _RayPool:
    def __init__(self, loader, workers: int | None, address: str | None):
        try:
            import ray
        except ImportError:
            raise RuntimeError("--ray needs Ray: pip install 'kvviz[ray]'.") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address or None, log_to_driver=False)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.size = workers or max(1, gpus)
        per_gpu = 1 if gpus >= self.size else (gpus / self.size if gpus else 0)
        cpus = ray.cluster_resources().get("CPU", 1)
        threads = max(1, int(cpus) // self.size)
        actor = ray.remote(num_gpus=per_gpu, num_cpus=0 if gpus else 1, max_concurrency=2)(SweepWorker)
        self.actors = [actor.remote(loader, 0 if gpus else threads) for _ in range(self.size)]
        self.busy: dict = {}  # ref -> its actor: one run at a time per actor

    def call(self, method: str, *args):
        actor = next(a for a in self.actors if all(a is not b for b in self.busy.values()))
        ref = getattr(actor, method).remote(*args)
        self.busy[ref] = actor
        return ref

    def wait(self, handles, timeout: float | None):
        done, _ = self.ray.wait(list(handles), num_returns=1, timeout=timeout)
        for h in done:
            self.busy.pop(h, None)
        return [(h, self.ray.get(h)) for h in done]

    def stop(self) -> None:
        self.ray.get([a.stop.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


# ------------------------------------------------------------------------------ the sweep


def run(
    settings: sweep.SweepSettings,
    *,
    loader: Callable,
    workers: int | None = 2,
    ray_address: str | None = None,
    use_ray: bool = False,
    on_progress: Callable[[sweep.Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_context: int | None = None,
) -> sweep.SweepResult:
    """``sweep.run`` over ``workers`` local processes (or Ray actors with ``use_ray``); the
    same rows in the same order. ``workers=None`` with Ray: one actor per GPU of the cluster."""
    should_stop = should_stop or (lambda: False)
    pool = _RayPool(loader, workers, ray_address) if use_ray else _LocalPool(loader, workers or 2)
    t0 = time.perf_counter()
    try:
        return _drive(pool, settings, on_progress, should_stop, max_context, t0)
    finally:
        pool.close()


def _drive(pool, settings, on_progress, should_stop, max_context, t0) -> sweep.SweepResult:
    [(_, (name, device, dtype, model_max))] = pool.wait([pool.call("describe")], None)
    [(_, the_plan)] = pool.wait([pool.call("plan", settings, max_context or model_max)], None)
    result = sweep.SweepResult(settings, [], model=name, device=device, dtype=dtype)
    total, rows, reference_logprobs = len(the_plan.runs), {}, None
    queue = list(range(total))
    if settings.task == "ppl":  # the reference first: every later run compares with it
        _progress(on_progress, 0, total, the_plan.runs[0].label, t0)
        [(_, outcome)] = pool.wait([pool.call("run", the_plan, queue.pop(0))], None)
        if outcome is None or should_stop():
            return _finish(result, rows, True, on_progress, 0, total, t0)
        result.reference, reference_logprobs = outcome
        if hasattr(pool, "ray"):  # one copy in Ray's object store for every actor
            reference_logprobs = pool.ray.put(reference_logprobs)
    done = total - len(queue)
    in_flight: dict = {}
    stopped = False
    while queue or in_flight:
        while queue and len(in_flight) < pool.size and not stopped:
            index = queue.pop(0)
            _progress(on_progress, done, total, the_plan.runs[index].label, t0)
            in_flight[pool.call("run", the_plan, index, reference_logprobs)] = index
        if stopped and not in_flight:
            break
        for handle, outcome in pool.wait(list(in_flight), 0.2):
            index = in_flight.pop(handle)
            if outcome is None:
                stopped = True
            else:
                rows[index] = outcome[0]
                done += 1
        if not stopped and should_stop():
            stopped = True
            pool.stop()
        if stopped:
            queue.clear()
    return _finish(result, rows, stopped, on_progress, done, total, t0)


def _progress(on_progress, done, total, label, t0) -> None:
    if on_progress is not None:
        on_progress(sweep.Progress(done, total, label, time.perf_counter() - t0))


def _finish(result, rows, stopped, on_progress, done, total, t0) -> sweep.SweepResult:
    result.rows = [rows[i] for i in sorted(rows)]
    result.stopped = stopped
    result.seconds = time.perf_counter() - t0
    _progress(on_progress, done, total, "", t0)
    return result
