"""A policy beside the full cache on the same prompt: the three runs the Live page compares.

- "policy": the policy's own free (greedy or sampled) run;
- "full": the full cache's free run;
- "forced": the policy teacher-forced on the full cache's output, with per-step KL and top-1
  agreement against the full cache's log-probabilities.

One after another by default (and the forced run skipped where it would replay the free one,
``forced_is_free``; the full cache's run taken from ``FullRuns`` when the same prompt ran before);
on lanes (``kvviz.runtime.lanes``) at once when ``KVVIZ_LIVE_LANES=1``.
Each run is ``engine.run`` (looked up when called: tests count the runs).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from kvviz.policies.spec import PolicySpec
from kvviz.record import metrics
from kvviz.record.trace import Trace
from kvviz.runtime import engine, lanes, run_records
from kvviz.runtime.engine import DecodeOptions, StepEvent
from kvviz.runtime.lanes import TokenFeed


@dataclass
class AgainstFull:
    """A policy beside the full cache on the same prompt."""

    full: Trace  # the full cache, free generation
    policy: Trace  # the policy, free generation
    forced: Trace  # the policy, teacher-forced on the full cache's tokens (per-step KL, top-1)

    @property
    def first_divergence(self) -> int | None:
        """Index of the first generated token that differs, or None if the outputs agree."""
        return metrics.first_divergence(self.full.generated_ids, self.policy.generated_ids)


class FullRuns:
    """The full cache's runs of recent prompts, for a later comparison of the same prompt with the
    same options on the same model: the Live page's next policy on a prompt skips one of its three
    runs. At most ``entries`` runs and ``max_bytes`` of their log-probabilities (kept on the CPU);
    the oldest go first. A run stopped by the user is not kept. Shared by threads."""

    def __init__(self, entries: int = 4, max_bytes: int = 256 * 2**20):
        self.entries, self.max_bytes = entries, max_bytes
        self._runs: OrderedDict[tuple, tuple] = OrderedDict()  # key -> (model ref, trace, log-probs)
        self._lock = threading.Lock()

    @staticmethod
    def key(model, prompt_ids, options: DecodeOptions, model_name: str = "") -> tuple | None:
        """What the full cache's run depends on; None when an option cannot be compared (a tensor)."""
        values = tuple((f.name, getattr(options, f.name)) for f in dataclasses.fields(options) if f.name != "keep_logprobs")
        try:
            hash(values)
        except TypeError:
            return None
        return id(model), tuple(int(i) for i in prompt_ids), model_name, values

    def get(self, model, key: tuple) -> tuple[Trace, torch.Tensor] | None:
        """A copy of the run kept under ``key`` (``extra["full_run_reused"]``) and its log-probs."""
        with self._lock:
            found = self._runs.get(key)
            if found is None or found[0]() is not model:  # a model loaded anew may take a freed one's id
                return None
            self._runs.move_to_end(key)
            trace = copy.deepcopy(found[1])
        trace.extra["full_run_reused"] = True
        return trace, found[2]

    def put(self, model, key: tuple, trace: Trace, logprobs: torch.Tensor) -> None:
        logprobs = logprobs.cpu()
        if trace.stopped_by == "user" or logprobs.nbytes > self.max_bytes:
            return
        with self._lock:
            self._runs[key] = (weakref.ref(model), copy.deepcopy(trace), logprobs)
            self._runs.move_to_end(key)
            while len(self._runs) > self.entries or sum(r[2].nbytes for r in self._runs.values()) > self.max_bytes:
                self._runs.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._runs.clear()


def against_full_runs(
    model, tokenizer, prompt_ids, policy, options: DecodeOptions | None = None, *, params=None, budget=None, ratio=None,
    on_policy_step=None, on_full_step=None, full_runs: FullRuns | None = None, **kw,
):
    """The three runs of a comparison, yielded as ``(phase, trace)`` when each ends: "policy"
    (free generation), "full" (the full cache, free generation) and "forced" (the policy
    teacher-forced on the full cache's output, with per-step KL and top-1 agreement against it).
    A consumer may stop iterating after any phase (a live view that was stopped). ``kw``: run's
    other keywords (model_name, should_stop, DecodeOptions fields).

    With ``KVVIZ_LIVE_LANES=1`` on a GPU with lanes (``kvviz.runtime.lanes``) the three run at once,
    each on its own thread and stream: the full cache's run beside the policy's, and the
    teacher-forced run following the full cache's tokens as they come (``DecodeOptions.forced_feed``);
    off by default (``lanes.live_at_once`` says why). Otherwise one after another, and the forced
    run is skipped where it would replay the free one (``forced_is_free``); with ``full_runs`` the
    full cache's run of an earlier comparison of the same prompt and options is taken from there."""
    spec = PolicySpec.of(policy, params, budget=budget, ratio=ratio)
    if lanes.count(model) >= 3 and lanes.live_at_once():
        yield from _against_full_at_once(model, tokenizer, prompt_ids, spec, options, on_policy_step, on_full_step, kw)
        return
    free = engine.run(model, tokenizer, prompt_ids, spec, options, keep_logprobs=True, on_step=on_policy_step, **kw)
    free_logprobs = free.extra.pop("logprobs")
    yield "policy", free
    decode = dataclasses.replace(options or DecodeOptions(), **{k: v for k, v in kw.items() if k in DECODE_FIELDS})
    key = None if full_runs is None else full_runs.key(model, prompt_ids, decode, kw.get("model_name", ""))
    kept = None if key is None or full_runs is None else full_runs.get(model, key)
    if kept is not None:
        full, reference = kept
    else:
        full = engine.run(model, tokenizer, prompt_ids, "full", options, keep_logprobs=True, on_step=on_full_step, **kw)
        reference = full.extra.pop("logprobs")
        if key is not None and full_runs is not None:
            full_runs.put(model, key, full, reference)
    yield "full", full
    if forced_is_free(free, full, decode):
        yield "forced", forced_from_free(free, free_logprobs, reference)
        return
    del free_logprobs
    yield "forced", engine.run(
        model, tokenizer, prompt_ids, spec, options, forced_ids=full.generated_ids, reference_logprobs=reference, **kw
    )


def _against_full_at_once(model, tokenizer, prompt_ids, spec: PolicySpec, options, on_policy_step, on_full_step, kw):
    """``against_full_runs`` on three lanes: the policy's run on this thread, the full cache's and
    the forced run on two others; phases yielded in the same order. A consumer that stops
    iterating stops the other two at their next token."""
    feed = TokenFeed()
    ended = threading.Event()
    asked = kw.pop("should_stop", None) or (lambda: False)
    kw["should_stop"] = lambda: ended.is_set() or asked()

    def full_run():
        def heard(event: StepEvent):
            feed.put(event.token_id)
            if on_full_step is not None:
                on_full_step(event)

        logprobs = None
        try:
            trace = engine.run(model, tokenizer, prompt_ids, "full", options, keep_logprobs=True, on_step=heard, **kw)
            logprobs = trace.extra.pop("logprobs") if trace.stopped_by != "user" else None
            return trace
        finally:
            feed.close(logprobs)  # a failed or stopped run ends the forced run too

    def forced_run():
        return engine.run(model, tokenizer, prompt_ids, spec, options, forced_feed=feed, **kw)

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="kvviz-lane") as pool:
        full = pool.submit(lanes.on_own_stream, model, full_run)
        forced = pool.submit(lanes.on_own_stream, model, forced_run)
        try:
            with lanes.own_stream(model):
                free = engine.run(model, tokenizer, prompt_ids, spec, options, on_step=on_policy_step, **kw)
            yield "policy", free
            yield "full", full.result()
            yield "forced", forced.result()
        finally:
            ended.set()


DECODE_FIELDS = {f.name for f in dataclasses.fields(DecodeOptions)}


def forced_is_free(free: Trace, full: Trace, options: DecodeOptions) -> bool:
    """Whether teacher-forcing the policy on the full cache's output would replay its free run step
    for step: greedy decoding that chose exactly the full cache's tokens, to its end (not stopped).
    The forced run then feeds the same tokens into the same cache: the same steps, evictions and
    log-probs (a seeded policy draws the same numbers: greedy choice draws none)."""
    return (not options.sample and free.generated_ids == full.generated_ids
            and free.stopped_by in ("max_new_tokens", "eos") and full.stopped_by == free.stopped_by)


def forced_from_free(free: Trace, logprobs: torch.Tensor, reference: torch.Tensor) -> Trace:
    """The teacher-forced trace of a run whose free steps it would replay (``forced_is_free``): its
    record, with KL and top-1 against the reference, marked teacher-forced, its stop reason the
    forced run's (the forced tokens' end), and ``extra["forced_from_free_run"]``: no third decode."""
    kl, top1 = run_records.against_reference(logprobs, reference)
    forced = dataclasses.replace(free, kl_to_reference=kl, top1_agreement=top1, teacher_forced=True,
                                 stopped_by="max_new_tokens", timings=dict(free.timings), extra=dict(free.extra))
    forced.extra["forced_from_free_run"] = True
    return forced


def against_full(model, tokenizer, prompt_ids, policy, options: DecodeOptions | None = None, **kw) -> AgainstFull:
    """Run the policy and the full cache on the same prompt, and the policy teacher-forced on the
    full cache's output to measure per-step KL and top-1 agreement."""
    runs = dict(against_full_runs(model, tokenizer, prompt_ids, policy, options, **kw))
    return AgainstFull(full=runs["full"], policy=runs["policy"], forced=runs["forced"])
