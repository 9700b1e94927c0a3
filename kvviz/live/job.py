"""The Live run on a background thread: the policy (its tokens streamed for the page), then, when
the request compares, the full cache and the policy teacher-forced on the full cache's output.

A stopped job still leaves a result with the tokens generated so far and says in which phase it
was stopped; every run is written to the run store (``kvviz.runs.store``) so that it reopens
after a restart. Nothing here imports streamlit.
"""

from __future__ import annotations

import time

from kvviz.i18n import N_, _
from kvviz.live.run import CHUNKED, REUSED, STOPPED_IN_PREFILL, LiveRequest, LiveResult
from kvviz.record.text import decode
from kvviz.runs import store as run_store
from kvviz.runtime import comparison
from kvviz.runtime.engine import StepEvent
from kvviz.runtime.jobs import BackgroundJob

PHASES = {
    "queued": N_("Starting"),
    "policy": N_("Generating with the policy"),
    "full": N_("Generating with the full cache, for the comparison"),
    "forced": N_("Scoring the policy on the full cache's output (KL, top-1)"),
}  # shown translated (progress is read in the page's script run); once it ended, progress() says "Done", "Stopped" or "Failed"
NEXT_PHASE = {"policy": "full", "full": "forced"}
# the full cache's runs of recent prompts, shared by every session of the server: the next policy
# on the same prompt (and model, and options) takes the full cache's run from here
FULL_RUNS = comparison.FullRuns()


class LiveJob(BackgroundJob):
    """Runs a LiveRequest; ``policy_ids`` / ``full_ids`` hold the tokens of the phase going on.
    ``stop()`` ends the current phase at its next token and skips the rest; the result keeps
    what was generated and the phase that was stopped."""

    thread_name = "kvviz-live"

    def __init__(self, model, tokenizer, request: LiveRequest):
        super().__init__()
        self.model, self.tokenizer, self.request = model, tokenizer, request
        self.phase = "queued"
        self.policy_ids: list[int] = []
        self.full_ids: list[int] = []
        self.kv_bytes: tuple[int, int] | None = None  # (policy, full) at the policy's latest step
        self.result: LiveResult | None = None
        self._traces: dict = {}  # phase -> Trace, as each ends
        self._walls: dict = {}  # seconds per phase
        self._stopped_in: str | None = None  # the phase Stop ended
        self._started = time.perf_counter()  # reset when the work starts

    def on_start(self) -> None:
        run_store.begin(self.request.run_id, self.request.to_dict())

    def size(self) -> tuple[int, int, int]:
        return self.request.prompt_len, self.request.max_new_tokens, 1

    def text(self, phase: str) -> str:
        """The output of ``phase`` so far, decoded from its whole id sequence."""
        return decode(self.tokenizer, list(self.policy_ids if phase == "policy" else self.full_ids))

    def running_progress(self) -> tuple[float, str]:
        n = self.request.max_new_tokens
        phases = ["policy", "full", "forced"] if self.request.compare else ["policy"]
        if self.phase not in phases:
            return 0.0, _(PHASES["queued"])
        current = {"policy": len(self.policy_ids), "full": len(self.full_ids)}.get(self.phase, 0)
        frac = (phases.index(self.phase) + min(current, n) / n) / len(phases)
        count = ""
        if self.phase in ("policy", "full"):
            count = (_(": {current} / {n} tokens").format(current=current, n=n) if current
                     else _(": reading the prompt ({n} tokens)").format(n=self.request.prompt_len))
        return min(frac, 1.0), _(PHASES[self.phase]) + count

    def work(self) -> None:
        req, self._started = self.request, time.perf_counter()
        runs = comparison.against_full_runs(
            self.model, self.tokenizer, req.prompt_ids, req.spec,
            max_new_tokens=req.max_new_tokens, model_name=req.model_name, should_stop=self.should_stop,
            on_policy_step=self._on_policy_step, on_full_step=lambda e: self.full_ids.append(e.token_id),
            question_at=req.question_at, full_runs=FULL_RUNS,
        )
        self.phase, t = "policy", time.perf_counter()
        for phase, trace in runs:
            reused = trace.extra.get("full_run_reused", False)
            chunked = phase == "forced" and trace.timings.get("decode_path") == "chunked"
            self._walls[REUSED if reused else CHUNKED if chunked else phase] = time.perf_counter() - t
            self._traces[phase] = trace
            if reused:
                self.full_ids = list(trace.generated_ids)
            if trace.stopped_by == "user":
                self._stopped_in = phase
                return
            if phase == "forced" or not req.compare:
                return
            if self.should_stop():  # Stop came just as this phase ended: the next one never started
                self._stopped_in = NEXT_PHASE[phase]
                return
            self.phase, t = NEXT_PHASE[phase], time.perf_counter()

    def finish(self) -> None:
        req, traces = self.request, self._traces
        if self.stop_raised:  # Stop during a prefill: this phase has nothing to show
            self._stopped_in = self.phase
        stopped_in = self._stopped_in
        full = traces.get("full") if stopped_in in (None, "forced") else None  # a partial comparison compares nothing
        forced = traces.get("forced") if stopped_in is None else None
        self._walls["whole run"] = time.perf_counter() - self._started
        trace = traces.get("policy")
        if trace is not None:
            self.result = LiveResult(
                req, trace, full, forced, self._walls, stopped_in=stopped_in,
                generated_text=decode(self.tokenizer, trace.generated_ids),
                full_text=decode(self.tokenizer, full.generated_ids) if full is not None else "",
            )
        elif stopped_in:  # Stop came during the policy's prefill
            self.notice = STOPPED_IN_PREFILL
        run_store.finish(req.run_id, self.result, self.error, self.notice)
        self.phase = "error" if self.error else "stopped" if stopped_in else "done"

    def _on_policy_step(self, event: StepEvent) -> None:
        self.policy_ids.append(event.token_id)
        self.kv_bytes = (event.kv_bytes, event.kv_bytes_full)
