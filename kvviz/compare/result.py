"""The result of comparing policies on one prompt: the full cache once, and per policy its own
generation and its teacher-forced run against the full cache. Tables of it, and its run bundle.

No torch here: a result reopened from a bundle is the same object as one just computed
(``kvviz.compare.run`` computes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kvviz.record import metrics
from kvviz.runs.bundle import BundleError, RunBundle, RunSettings, traces_json
from kvviz.policies.spec import PolicySpec
from kvviz.record.token_states import clamp_step, occupancy
from kvviz.record.trace import Trace

DIVERGENCE_NOTE = "counted from 0 = the first generated token"


@dataclass
class PolicyRun:
    spec: PolicySpec
    trace: Trace  # the policy's own greedy generation (``extra["score_cut"]`` when recorded)
    forced: Trace | None = None  # teacher-forced on the full cache's output: kl_to_reference, top1_agreement

    @property
    def label(self) -> str:
        return self.spec.label()

    def first_divergence(self, full: Trace) -> int | None:
        """Index of the first generated token that differs from the full cache's (0 = the first)."""
        return metrics.first_divergence(full.generated_ids, self.trace.generated_ids)

    @property
    def mean_kl(self) -> float:
        return metrics.mean_or_nan(None if self.forced is None else self.forced.kl_to_reference)

    @property
    def top1_agreement(self) -> float:
        return metrics.mean_or_nan(None if self.forced is None else self.forced.top1_agreement)


@dataclass
class ComparisonResult:
    settings: RunSettings
    full: Trace  # the full cache, greedy: the reference
    runs: list[PolicyRun]
    stopped: bool = False  # the person pressed Stop: ``runs`` holds the policies that finished
    wall_s: dict[str, float] = field(default_factory=dict)  # seconds per run ("full", "p1", "p1.forced", ...)
    _traces_text: str | None = field(default=None, repr=False, compare=False)  # the bundle's traces, written once

    @property
    def n_steps(self) -> int:
        """Steps of the longest run: the range of the shared step slider."""
        return max([self.full.n_steps] + [r.trace.n_steps for r in self.runs])

    @property
    def labels(self) -> list[str]:
        """One label per policy run; repeated specs get their column number."""
        labels = [r.label for r in self.runs]
        return [f"p{i + 1}: {label}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]

    def divergences(self) -> list[int | None]:
        return [r.first_divergence(self.full) for r in self.runs]

    # ------------------------------------------------------------------------------ tables

    def summary_table(self, step: int | None = None) -> pd.DataFrame:
        """One row per run (the full cache first) at ``step`` (default: each run's last). The
        first divergence is blank where the output equals the full cache's."""
        rows = []
        for label, trace, run in [("full cache", self.full, None)] + [(l, r.trace, r) for l, r in zip(self.labels, self.runs)]:
            s = clamp_step(trace, trace.n_steps - 1 if step is None else step)
            saving = metrics.memory_saving(trace, s)
            held, full_entries = occupancy(trace, s)
            div = None if run is None else run.first_divergence(self.full)
            rows.append(
                {
                    "policy": label,
                    "spec": "full" if run is None else run.spec.to_text(),
                    "step": s,
                    "kept entries per layer and KV head": float(np.mean(held)),
                    "entries of the full cache": full_entries,
                    "kv_bytes": saving.kv_bytes,
                    "kv_bytes_full": saving.kv_bytes_full,
                    "held %": round(saving.held_pct, 2),
                    "generated tokens": trace.n_steps,
                    "first divergence": pd.NA if div is None else div,  # blank: none
                    "mean KL (nats)": 0.0 if run is None else run.mean_kl,
                    "top-1 agreement": 1.0 if run is None else run.top1_agreement,
                    "output": trace.generated_text,
                }
            )
        table = pd.DataFrame(rows)
        table["first divergence"] = table["first divergence"].astype("Int64")
        return table

    def steps_table(self) -> pd.DataFrame:
        """One row per run and step: bytes held, and against the full cache KL and top-1 agreement."""
        rows = []
        for label, trace, forced in [("full cache", self.full, None)] + [(l, r.trace, r.forced) for l, r in zip(self.labels, self.runs)]:
            for s in range(trace.n_steps):
                kl = top1 = None
                if trace is self.full:
                    kl, top1 = 0.0, True
                elif forced is not None and forced.kl_to_reference is not None and s < len(forced.kl_to_reference):
                    kl, top1 = float(forced.kl_to_reference[s]), bool(forced.top1_agreement[s])
                rows.append(
                    {
                        "policy": label,
                        "step": s,
                        "token": trace.tokens[trace.prompt_len + s],
                        "kv_bytes": int(trace.kv_bytes[s]),
                        "kv_bytes_full": int(trace.kv_bytes_full[s]),
                        "KL to full (nats)": kl,
                        "top-1 agrees": top1,
                    }
                )
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------------------ bundles

    def to_bundle(self, step: int | None = None) -> RunBundle:
        settings = RunSettings(**{**vars(self.settings), "step": int(self.settings.step if step is None else step)})
        traces = {"full": self.full}
        for i, run in enumerate(self.runs, start=1):
            traces[f"p{i}"] = run.trace
            if run.forced is not None:
                traces[f"p{i}.forced"] = run.forced
        return RunBundle(kind="compare", settings=settings, traces=traces)

    def bundle_json(self, step: int | None = None) -> str:
        """The run bundle as JSON text; the traces are written once per result."""
        return self.to_bundle(step).to_json(traces_text=self._traces())

    def bundle_bytes(self) -> int:
        """About the size of the bundle (its traces), to tell before offering it."""
        return len(self._traces().encode("utf-8"))

    def _traces(self) -> str:
        if self._traces_text is None:
            self._traces_text = traces_json(self.to_bundle().traces)
        return self._traces_text

    @classmethod
    def from_bundle(cls, bundle: RunBundle) -> "ComparisonResult":
        """The comparison a bundle holds; raises BundleError when its traces do not fit together."""
        if bundle.kind != "compare":
            raise BundleError(f"This bundle comes from the {bundle.kind} page, not from Compare.")
        specs = bundle.settings.policies
        names = {"full"} | {f"p{i}" for i in range(1, len(specs) + 1)} | {f"p{i}.forced" for i in range(1, len(specs) + 1)}
        unknown = sorted(set(bundle.traces) - names)
        if unknown:
            raise BundleError(f"traces: '{unknown[0]}' is not part of a comparison of {len(specs)} policies.")
        if "full" not in bundle.traces:
            raise BundleError("traces: the full cache's trace ('full') is missing.")
        full = bundle.traces["full"]
        runs = []
        for i, spec in enumerate(specs, start=1):
            trace, forced = bundle.traces.get(f"p{i}"), bundle.traces.get(f"p{i}.forced")
            if trace is None:
                if forced is not None:
                    raise BundleError(f"traces: 'p{i}.forced' without 'p{i}'.")
                continue  # a stopped comparison holds the policies that finished
            for name, t in ((f"p{i}", trace), (f"p{i}.forced", forced)):
                if t is None:
                    continue
                if t.prompt_ids != full.prompt_ids:
                    raise BundleError(f"traces.{name}: its prompt differs from the full cache's.")
                if t.spec is not None and PolicySpec.from_dict(t.spec) != spec:
                    raise BundleError(f"traces.{name}: it ran {t.policy}, not the settings' p{i} ({spec.to_text()}).")
            if forced is not None and (forced.generated_ids != full.generated_ids or forced.kl_to_reference is None):
                raise BundleError(f"traces.p{i}.forced: not teacher-forced on the full cache's output.")
            runs.append(PolicyRun(spec, trace, forced))
        if not runs:
            raise BundleError("The bundle holds no policy that finished: nothing to compare.")
        stopped = len(runs) < len(specs)
        return cls(settings=bundle.settings, full=full, runs=runs, stopped=stopped)
