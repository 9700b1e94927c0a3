"""A policy beside the full cache on the same prompt: the three runs the Live page compares.

- "policy": the policy's own free (greedy or sampled) run;
- "full": the full cache's free run;
- "forced": the policy teacher-forced on the full cache's output, with per-step KL and top-1
  agreement against the full cache's log-probabilities.

One after another by default (and the forced run skipped where it would replay the free one,
``forced_is_free``); on lanes (``kvviz.runtime.lanes``) at once when ``KVVIZ_LIVE_LANES=1``.
Each run is ``engine.run`` (looked up when called: tests count the runs).
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from kvviz.policies.spec import PolicySpec
from kvviz.record import metrics
from kvviz.record.trace import Trace
from kvviz.runtime import engine, lanes
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


def against_full_runs(
    model, tokenizer, prompt_ids, policy, options: DecodeOptions | None = None, *, params=None, budget=None, ratio=None,
    on_policy_step=None, on_full_step=None, **kw,
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
    run is skipped where it would replay the free one (``forced_is_free``)."""
    spec = PolicySpec.of(policy, params, budget=budget, ratio=ratio)
    if lanes.count(model) >= 3 and lanes.live_at_once():
        yield from _against_full_at_once(model, tokenizer, prompt_ids, spec, options, on_policy_step, on_full_step, kw)
        return
    free = engine.run(model, tokenizer, prompt_ids, spec, options, keep_logprobs=True, on_step=on_policy_step, **kw)
    free_logprobs = free.extra.pop("logprobs")
    yield "policy", free
    full = engine.run(model, tokenizer, prompt_ids, "full", options, keep_logprobs=True, on_step=on_full_step, **kw)
    reference = full.extra.pop("logprobs")
    yield "full", full
    if forced_is_free(free, full, dataclasses.replace(options or DecodeOptions(), **{k: v for k, v in kw.items() if k in DECODE_FIELDS})):
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
    kl, top1 = engine.against_reference(logprobs, reference)
    forced = dataclasses.replace(free, kl_to_reference=kl, top1_agreement=top1, teacher_forced=True,
                                 stopped_by="max_new_tokens", timings=dict(free.timings), extra=dict(free.extra))
    forced.extra["forced_from_free_run"] = True
    return forced


def against_full(model, tokenizer, prompt_ids, policy, options: DecodeOptions | None = None, **kw) -> AgainstFull:
    """Run the policy and the full cache on the same prompt, and the policy teacher-forced on the
    full cache's output to measure per-step KL and top-1 agreement."""
    runs = dict(against_full_runs(model, tokenizer, prompt_ids, policy, options, **kw))
    return AgainstFull(full=runs["full"], policy=runs["policy"], forced=runs["forced"])
