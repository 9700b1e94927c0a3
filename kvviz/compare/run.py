"""Two to four policies on one prompt, against the full cache computed once.

The runs, in order:

1. the full cache, greedy, keeping its per-step log-probabilities: the reference;
2. for each policy, its own greedy generation, recording at every eviction the **cut** of each
   layer and KV head: the lowest score among the entries kept on merit (see ``record_cuts``);
3. for each policy, teacher-forced on the full cache's output, for per-step KL(full ‖ policy) and
   top-1 agreement on the same text.

These are ``comparison.against_full_runs``' three runs with the full cache shared: 1 + 2 × policies runs
instead of 3 × policies. ``compare`` runs them in the caller's thread; ``kvviz.compare.job.CompareJob``
runs them on a background thread for a page (progress, Stop).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from kvviz.i18n import N_, _
from kvviz.compare.result import ComparisonResult, PolicyRun
from kvviz.policies.spec import PolicySpec
from kvviz.record.trace import Trace
from kvviz.runs.bundle import RunSettings
from kvviz.runtime import engine
from kvviz.runtime.inputs import InputError, check_run, prompt_ids
from kvviz.runtime.jobs import Stopped

MIN_POLICIES, MAX_POLICIES = 2, 4
MAX_NEW_TOKENS = 256


@dataclass
class Progress:
    """Passed to ``on_progress`` after every generated token and when a run starts."""

    run: int  # 0-based index of the run going on, out of ``n_runs``
    n_runs: int
    name: str  # "full", "p1", "p1.forced", ...
    label: str  # what a person reads: "full cache", "h2o · 25%", "h2o · 25%, teacher-forced"
    tokens: int  # tokens of this run so far
    n_tokens: int  # tokens this run will produce at most

    @property
    def fraction(self) -> float:
        return min((self.run + min(self.tokens, self.n_tokens) / max(self.n_tokens, 1)) / self.n_runs, 1.0)

    def line(self) -> str:
        """The line a page shows, in the session's language (the label is saved in English)."""
        label = self.label
        if label == FULL_LABEL:
            label = _(FULL_LABEL)
        elif label.endswith(FORCED_SUFFIX):
            label = _("{policy}, teacher-forced on the full cache's output").format(policy=label[: -len(FORCED_SUFFIX)])
        return _("Run {run} of {n_runs}: {label}, {tokens} / {n_tokens} tokens").format(
            run=self.run + 1, n_runs=self.n_runs, label=label, tokens=self.tokens, n_tokens=self.n_tokens)


FULL_LABEL = N_("full cache")
FORCED_SUFFIX = ", teacher-forced on the full cache's output"


# ------------------------------------------------------------------------------ checking input


def prepare(tokenizer, settings: RunSettings, max_context: int | None = None) -> list[int]:
    """The prompt's token ids, once everything a comparison needs is checked; raises InputError
    with one line naming the problem (and the policy, p1..p4)."""
    if not MIN_POLICIES <= len(settings.policies) <= MAX_POLICIES:
        raise InputError(_("Compare {low} to {high} policies, not {n}.").format(
            low=MIN_POLICIES, high=MAX_POLICIES, n=len(settings.policies)))
    ids = prompt_ids(tokenizer, settings.prompt_text, chat=settings.chat, max_context=max_context)
    check_run(
        len(ids), settings.max_new_tokens, max_context=max_context, specs=settings.policies,
        max_new_tokens=MAX_NEW_TOKENS, number_specs=True,
    )
    question_at(tokenizer, settings, ids)  # a prompt without a question, a budget larger than the context
    return ids


def question_at(tokenizer, settings: RunSettings, ids: list[int]) -> int | None:
    """Where the question starts when the policies compress the context before it; None otherwise."""
    if not settings.question_after:
        return None
    from kvviz.record.question import question_start

    try:
        q = question_start(tokenizer, ids, settings.prompt_text)
        for spec in settings.policies:
            spec.resolve_budget(q)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return q


# ------------------------------------------------------------------------------ the cut


def record_cuts(spec: PolicySpec, n_layers: int, n_kv_heads: int, capacity: int):
    """The spec's pipeline with its selector instrumented, and the array it fills.

    The array (steps, layers, kv_heads) holds, for every step at which a layer evicted, the
    **cut** of each KV head: the lowest score among the entries it kept on merit, that is with a
    score at least the highest score it evicted. Entries a policy protects (sinks, its recent
    window) can stay with lower scores; they are not the cut. NaN: no eviction there.

    The instrumented selector runs eagerly (no CUDA graph: a graph replay would skip the
    recording)."""
    pipeline = spec.pipeline()
    cuts = np.full((capacity, n_layers, n_kv_heads), np.nan, dtype=np.float32)
    selector = pipeline.selector
    if selector is None:
        return pipeline, cuts
    decide = selector.step

    def step(layer, ctx):
        decision = decide(layer, ctx)
        if decision is not None and decision.scores is not None:
            cuts[ctx.step, layer.layer_idx] = selection_cut(decision.scores, decision.keep).cpu().numpy()
        return decision

    selector.step = step  # this pipeline object only: it was built for this run
    return pipeline, cuts


def selection_cut(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """scores (kv_heads, n), keep (kv_heads, k) -> (kv_heads,): the lowest kept score that is at
    least the highest evicted score; NaN for a head that evicted nothing."""
    scores = scores.float()
    kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, keep, True)
    evicted_max = scores.masked_fill(kept, float("-inf")).amax(dim=-1, keepdim=True)  # (kv_heads, 1)
    on_merit = kept & (scores >= evicted_max)
    cut = scores.masked_fill(~on_merit, float("inf")).amin(dim=-1)
    return torch.where(torch.isfinite(evicted_max[:, 0]) & torch.isfinite(cut), cut, torch.nan)


# ------------------------------------------------------------------------------ the runs


def run_names(n_policies: int) -> list[str]:
    return ["full"] + [name for i in range(1, n_policies + 1) for name in (f"p{i}", f"p{i}.forced")]


def compare(
    model,
    tokenizer,
    prompt_ids: list[int],
    settings: RunSettings,
    *,
    model_name: str = "",
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_trace: Callable[[str, Trace], None] | None = None,
) -> ComparisonResult | None:
    """Run ``settings.policies`` against the full cache on ``prompt_ids``.

    ``on_trace(name, trace)`` is called as each run ends. Stopped (``should_stop``): the result
    holds the policies whose runs finished, ``stopped`` set; None when the full cache itself did
    not finish."""
    specs, n_new = settings.policies, settings.max_new_tokens
    q = question_at(tokenizer, settings, prompt_ids)
    names = run_names(len(specs))
    stop = should_stop or (lambda: False)
    walls: dict[str, float] = {}
    config = model.config
    n_layers = config.num_hidden_layers
    n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads

    def one(name: str, label: str, n_tokens: int, **kw) -> Trace | None:
        """The run, or None when Stop came during its prefill."""
        index = names.index(name)
        progress = Progress(index, len(names), name, label, 0, n_tokens)
        if on_progress is not None:
            on_progress(progress)

        def on_step(event):
            progress.tokens = event.step + 1
            if on_progress is not None:
                on_progress(progress)

        t = time.perf_counter()
        try:
            trace = engine.run(model, tokenizer, prompt_ids, model_name=model_name, on_step=on_step, should_stop=stop, **kw)
        except Stopped:
            return None
        walls[name] = time.perf_counter() - t
        if on_trace is not None:
            on_trace(name, trace)
        return trace

    full = one("full", FULL_LABEL, n_new, policy="full", max_new_tokens=n_new, keep_logprobs=True)
    if full is None or full.stopped_by == "user":
        return None
    reference = full.extra.pop("logprobs")  # (steps, vocab)
    runs: list[PolicyRun] = []
    for i, spec in enumerate(specs, start=1):
        if stop():
            break
        pipeline, cuts = record_cuts(spec, n_layers, n_kv, n_new)
        trace = one(f"p{i}", spec.label(), n_new, policy=pipeline, max_new_tokens=n_new, cuda_graphs=False, question_at=q)
        if trace is None or trace.stopped_by == "user":
            break
        trace.spec = spec.to_dict()  # a ready-made pipeline leaves it unset
        trace.extra["score_cut"] = cuts[: trace.n_steps]
        forced = one(
            f"p{i}.forced", spec.label() + FORCED_SUFFIX, full.n_steps,
            policy=spec, forced_ids=full.generated_ids, reference_logprobs=reference, question_at=q,
        )
        if forced is None or forced.stopped_by == "user":
            break
        runs.append(PolicyRun(spec, trace, forced))
    return ComparisonResult(settings=settings, full=full, runs=runs, stopped=len(runs) < len(specs), wall_s=walls)
