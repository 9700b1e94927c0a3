"""A sweep for a page: an estimate of its time before it starts, measured on this machine, and a
background job that runs it while the page shows progress and a Stop button.

The estimate is honest about what it is: one full-cache prefill and a few decode steps are timed
here, and each planned run is extrapolated from them (prefill linear in the prompt's tokens, one
step per forced or generated token, or a prefill's cost per token for a forced continuation read
in chunks). Policies that score with attention or quantize do more work
per step than the full cache; the upper end allows them twice the time. While the sweep runs,
the time left is extrapolated from the runs already finished. Nothing here imports streamlit.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from kvviz.i18n import _
from kvviz.sweep import run as sweep
from kvviz.runtime import forced_chunks
from kvviz.runtime.jobs import BackgroundJob
from kvviz.record.examples import long_document

SLOW_POLICY_FACTOR = 2.0  # upper end: per-step cost of a policy that scores or quantizes, against the full cache


@dataclass(frozen=True)
class Speed:
    """Full-cache timings measured on this machine."""

    device: str
    prefill_s_per_token: float
    step_s: float  # one decode step
    measured_tokens: int


def measure_speed(model, tokenizer, n_tokens: int = 128, steps: int = 5) -> Speed:
    """Time one full-cache prefill of ``n_tokens`` tokens of the built-in long document and
    ``steps`` decode steps (the median step)."""
    from kvviz.runtime import engine

    ids = tokenizer(long_document()).input_ids[:n_tokens]
    trace = engine.run(model, tokenizer, ids, "full", max_new_tokens=steps + 1, stop_at_eos=False, top_k=1)
    step_s = statistics.median(trace.timings["step_s"][:-1])  # the last step feeds nothing
    return Speed(trace.device, trace.timings["prefill_s"] / len(ids), step_s, len(ids))


@dataclass(frozen=True)
class Estimate:
    low_s: float  # every run at the full cache's speed
    high_s: float  # scoring and quantizing policies at SLOW_POLICY_FACTOR times its step cost
    runs: int
    speed: Speed

    def text(self) -> str:
        span = _seconds(self.low_s) if _seconds(self.low_s) == _seconds(self.high_s) else f"{_seconds(self.low_s)} to {_seconds(self.high_s)}"
        return (
            f"Estimated time: about {span} for {self.runs} runs on {self.speed.device} "
            f"(an estimate from a full-cache forward timed here just now: {1000 * self.speed.prefill_s_per_token:.1f} ms per "
            f"prompt token, {1000 * self.speed.step_s:.0f} ms per decode step; policies that score attention or quantize "
            "take longer per step, and a busy machine is slower)."
        )


def estimate(the_plan: sweep.Plan, speed: Speed) -> Estimate:
    """A forced continuation that is read in chunks (``kvviz.runtime.forced_chunks``: the reference,
    prompt-only policies) costs what a prefill of its tokens costs; every other run a step per token."""
    low = high = 0.0
    for run in the_plan.runs:
        prefill = len(run.prompt_ids) * speed.prefill_s_per_token
        chunked = the_plan.settings.task == "ppl" and (run.spec is None or forced_chunks.reads_in_chunks(run.spec.pipeline()))
        steps = run.steps * (speed.prefill_s_per_token if chunked else speed.step_s)
        plain = chunked or run.spec is None or _plain(run.spec)
        low += prefill + steps
        high += prefill + steps * (1.0 if plain else SLOW_POLICY_FACTOR)
    return Estimate(low, high, len(the_plan.runs), speed)


def plan_size(the_plan: sweep.Plan) -> tuple[int, int, int]:
    """(longest prompt, most forced or generated tokens of one run, runs) of a planned sweep."""
    runs = the_plan.runs
    return max((len(r.prompt_ids) for r in runs), default=0), max((r.steps for r in runs), default=0), len(runs)


def _plain(spec) -> bool:
    """A policy that neither scores with attention queries nor transforms what it stores."""
    pipeline = spec.pipeline()
    return pipeline.storage is None and (pipeline.selector is None or not pipeline.selector.needs_queries)


def _seconds(s: float) -> str:
    return _("{n} s").format(n=f"{s:.0f}") if s < 120 else _("{n} min").format(n=f"{s / 60:.1f}")


class SweepJob(BackgroundJob):
    """Runs a sweep; ``stop()`` ends the run in progress at its next token, and the result keeps
    the runs finished before."""

    thread_name = "kvviz-sweep"

    def __init__(self, model, tokenizer, settings: sweep.SweepSettings, *, model_name: str = "", max_context: int | None = None):
        super().__init__()
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.model_name, self.max_context = model_name, max_context
        self.latest: sweep.Progress | None = None
        self.result: sweep.SweepResult | None = None

    def work(self) -> None:
        self.result = sweep.run(
            self.model, self.tokenizer, self.settings, on_progress=self._on_progress,
            should_stop=self.should_stop, model_name=self.model_name, max_context=self.max_context,
        )

    def size(self) -> tuple[int, int, int]:
        return plan_size(sweep.plan(self.tokenizer, self.settings, max_context=self.max_context))

    def running_progress(self) -> tuple[float, str]:
        """The run going on and the time left at the pace so far."""
        p = self.latest
        if p is None:
            return 0.0, _("Starting")
        label = sweep.shown_label(p.label)
        line = _("Run {run} of {total}: {label}").format(run=p.done + 1, total=p.total, label=label)
        if p.done:
            line = _("Run {run} of {total}: {label}; about {left} left at the pace so far").format(
                run=p.done + 1, total=p.total, label=label, left=_seconds(p.elapsed_s / p.done * (p.total - p.done)))
        return p.done / p.total, line

    def _on_progress(self, progress: sweep.Progress) -> None:
        self.latest = progress
