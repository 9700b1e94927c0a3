"""A live run of one policy, for the Live policy page: check the input, run the policy on a
background thread while a page shows its tokens, then run the full cache and the policy
teacher-forced on the full cache's output, for the comparison.

The page polls a ``LiveJob`` (token ids so far, phase, progress) and keeps its ``LiveResult``; a
job survives the page's reruns, a stopped job still leaves a result with the tokens generated so
far and says in which phase it was stopped, and every run is written to the run store
(``kvviz.runs.store``) so that it reopens after a restart. Nothing here imports streamlit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from kvviz.runtime import engine
from kvviz.runs import store as run_store
from kvviz.runtime.jobs import BackgroundJob, Stopped
from kvviz.runtime.engine import AgainstFull, StepEvent
from kvviz.model.loading import out_of_memory_message
from kvviz.policies import PolicyError
from kvviz.policies.spec import PolicySpec, budget_notes
from kvviz.record.text import PromptError, decode, encode_prompt
from kvviz.record.trace import Trace

PHASES = {
    "queued": "Starting",
    "policy": "Generating with the policy",
    "full": "Generating with the full cache, for the comparison",
    "forced": "Scoring the policy on the full cache's output (KL, top-1)",
    "done": "Done",
    "stopped": "Stopped",
    "error": "Failed",
}
STOPPED_IN = {
    "policy": "Stopped during the policy's own run: the output below is partial, and there is no comparison.",
    "full": "The policy's run finished; Stop came during the full cache's run, so there is no comparison with it.",
    "forced": "The policy's and the full cache's runs finished (the outputs compare below); Stop came while "
    "scoring the policy on the full cache's output, so there is no per-step KL or top-1 agreement.",
}
STOPPED_IN_PREFILL = "Stopped while the model read the prompt (the prefill), before the policy's first token: nothing was generated."

LONG_PROMPT_CPU = 1500  # tokens: beyond this a CPU prefill takes long enough to warn about
MAX_NEW_TOKENS = 256


class LiveInputError(ValueError):
    """Input a live run cannot use; the message is one line, fit to show to a person."""


# ------------------------------------------------------------------------------ requests


@dataclass
class LiveRequest:
    spec: PolicySpec
    max_new_tokens: int
    prompt_ids: list[int]
    compare: bool = True  # also run the full cache and the teacher-forced policy
    prompt_name: str = ""
    model_name: str = ""
    passkey: str | None = None  # the hidden pass key when the prompt is the passkey example
    notes: list[str] = field(default_factory=list)  # what the policy really protects at this budget
    run_id: str = field(default_factory=run_store.new_run_id)
    started_at: float = field(default_factory=time.time)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    def to_dict(self) -> dict:
        return {
            "spec": self.spec.to_text(), "max_new_tokens": self.max_new_tokens, "prompt_ids": self.prompt_ids,
            "compare": self.compare, "prompt_name": self.prompt_name, "model_name": self.model_name,
            "passkey": self.passkey, "notes": self.notes, "run_id": self.run_id, "started_at": self.started_at,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LiveRequest":
        d = dict(d)
        d["spec"] = PolicySpec.parse(d["spec"])
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def prepare(
    tokenizer,
    prompt: str,
    *,
    chat: bool,
    spec: PolicySpec | str,
    max_new_tokens: int = 32,
    max_context: int | None = None,
    compare: bool = True,
    prompt_name: str = "",
    model_name: str = "",
    passkey: str | None = None,
) -> LiveRequest:
    """Check everything a run needs before it starts; raises LiveInputError with one line."""
    try:
        ids = encode_prompt(tokenizer, prompt, chat=chat, max_context=max_context)
        spec = spec if isinstance(spec, PolicySpec) else PolicySpec.parse(spec)
        spec.resolve_budget(len(ids))  # budget larger than the prompt, ...
        notes = budget_notes(spec, len(ids))
    except (PromptError, PolicyError) as exc:
        raise LiveInputError(str(exc)) from None
    if not 1 <= int(max_new_tokens) <= 4096:
        raise LiveInputError(f"New tokens must be between 1 and 4096, not {max_new_tokens}.")
    if max_context and len(ids) + max_new_tokens > max_context:
        raise LiveInputError(
            f"The prompt ({len(ids)} tokens) plus {max_new_tokens} new tokens exceeds the model's context of {max_context}."
        )
    return LiveRequest(
        spec=spec, max_new_tokens=int(max_new_tokens), prompt_ids=ids, compare=compare,
        prompt_name=prompt_name, model_name=model_name, passkey=passkey, notes=notes,
    )


def prompt_length(tokenizer, prompt: str, chat: bool) -> int | None:
    """Tokens of the prompt as a run would encode it; None when it cannot be encoded (empty)."""
    try:
        return len(encode_prompt(tokenizer, prompt, chat=chat))
    except PromptError:
        return None


# ------------------------------------------------------------------------------ results


@dataclass
class LiveResult:
    request: LiveRequest
    trace: Trace  # the policy, free generation (partial when stopped in the policy's phase)
    full: Trace | None = None  # the full cache, free generation
    forced: Trace | None = None  # the policy teacher-forced on the full cache's output
    wall_s: dict = field(default_factory=dict)  # seconds per phase, and "whole run"
    stopped_in: str | None = None  # the phase Stop ended ("policy", "full", "forced"), None if not stopped
    generated_text: str = ""  # the policy's output, decoded from the whole id sequence
    full_text: str = ""

    @property
    def stopped(self) -> bool:
        return self.stopped_in is not None

    @property
    def against_full(self) -> AgainstFull | None:
        if self.full is None:
            return None
        return AgainstFull(full=self.full, policy=self.trace, forced=self.forced)

    @property
    def first_divergence(self) -> int | None:
        cmp = self.against_full
        return None if cmp is None else cmp.first_divergence


def trace_json(trace: Trace) -> str:
    """The trace as JSON text (what ``Trace.save`` writes to a .json file), for a download."""
    return trace.to_json()


# ------------------------------------------------------------------------------ the job


class LiveJob(BackgroundJob):
    """Runs a LiveRequest on a background thread; safe to poll from another thread.

    Phases: the policy (token ids streamed into ``policy_ids``), then, when the request
    compares, the full cache (``full_ids``) and the policy teacher-forced on the full cache's
    output. ``stop()`` ends the current phase at its next token and skips the rest; the result
    keeps what was generated and the phase that was stopped.
    """

    thread_name = "kvviz-live"

    def __init__(self, model, tokenizer, request: LiveRequest):
        self.model, self.tokenizer, self.request = model, tokenizer, request
        self.phase = "queued"
        self.policy_ids: list[int] = []
        self.full_ids: list[int] = []
        self.kv_bytes: tuple[int, int] | None = None  # (policy, full) at the policy's latest step
        self.error: str | None = None
        self.notice: str | None = None  # a stop that left no result (during the policy's prefill)
        self.result: LiveResult | None = None
        super().__init__()

    def start(self) -> "LiveJob":
        run_store.begin(self.request.run_id, self.request.to_dict())
        return super().start()

    @property
    def running(self) -> bool:
        return self.phase not in ("done", "stopped", "error")

    def wait(self, timeout: float | None = None) -> bool:
        self._join(timeout)
        return not self.running

    def text(self, phase: str) -> str:
        """The output of ``phase`` so far, decoded from its whole id sequence."""
        return decode(self.tokenizer, list(self.policy_ids if phase == "policy" else self.full_ids))

    def progress(self) -> tuple[float, str]:
        """(fraction done, a line saying what runs now)."""
        n = self.request.max_new_tokens
        phases = ["policy", "full", "forced"] if self.request.compare else ["policy"]
        if not self.running:
            return 1.0, PHASES[self.phase]
        if self.phase == "queued":
            return 0.0, PHASES["queued"]
        done_before = phases.index(self.phase)
        current = {"policy": len(self.policy_ids), "full": len(self.full_ids)}.get(self.phase, 0)
        frac = (done_before + min(current, n) / n) / len(phases)
        count = ""
        if self.phase in ("policy", "full"):
            count = f": {current} / {n} tokens" if current else f": reading the prompt ({self.request.prompt_len} tokens)"
        return min(frac, 1.0), PHASES[self.phase] + count

    def run(self) -> None:
        req, walls = self.request, {}
        stop = self._stop.is_set
        trace = full = forced = None
        stopped_in = None
        start = t = time.perf_counter()
        try:
            runs = engine.against_full_runs(
                self.model, self.tokenizer, req.prompt_ids, req.spec,
                max_new_tokens=req.max_new_tokens, model_name=req.model_name, should_stop=stop,
                on_policy_step=self._on_policy_step, on_full_step=lambda e: self.full_ids.append(e.token_id),
            )
            self.phase = "policy"
            following = {"policy": "full", "full": "forced"}
            for phase, result in runs:
                walls[phase] = time.perf_counter() - t
                trace, full, forced = (result, full, forced) if phase == "policy" else (trace, result, forced) if phase == "full" else (trace, full, result)
                if result.stopped_by == "user":
                    stopped_in = phase
                    break
                if phase == "forced" or not req.compare:
                    break
                if stop():  # Stop came just as this phase ended: the next one never started
                    stopped_in = following[phase]
                    break
                self.phase, t = following[phase], time.perf_counter()
        except Stopped:  # during a prefill: this phase has nothing to show
            stopped_in = self.phase
        except torch.OutOfMemoryError as exc:
            self.error = out_of_memory_message(exc)
        except (PolicyError, PromptError, ValueError) as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001  (shown in the page; the app keeps working)
            self.error = f"{type(exc).__name__}: {exc}"
        if stopped_in in ("full", "forced"):  # a partial comparison compares nothing
            full = full if stopped_in == "forced" else None
            forced = None
        walls["whole run"] = time.perf_counter() - start
        if trace is not None:
            self.result = LiveResult(
                req, trace, full, forced, walls, stopped_in=stopped_in,
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
