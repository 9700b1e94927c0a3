"""A live run of one policy, for the Live policy page: check the input, run the policy on a
background thread while a page shows its tokens, then run the full cache and the policy
teacher-forced on the full cache's output, for the comparison.

The page polls a ``LiveJob`` (tokens so far, phase, progress) and keeps its ``LiveResult``; a job
survives the page's reruns, and a stopped job still leaves a result with the tokens generated so
far. Nothing here imports streamlit.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from kvviz import engine
from kvviz.engine import Comparison, StepEvent
from kvviz.policies import PolicyError
from kvviz.spec import PolicySpec
from kvviz.text import PromptError, encode_prompt
from kvviz.trace import Trace, _json_default

PHASES = {
    "queued": "Starting",
    "policy": "Generating with the policy",
    "full": "Generating with the full cache, for the comparison",
    "forced": "Scoring the policy on the full cache's output (KL, top-1)",
    "done": "Done",
    "stopped": "Stopped",
    "error": "Failed",
}


LONG_PROMPT_CPU = 1500  # tokens: beyond this a CPU prefill takes long enough to warn about


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

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)


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
) -> LiveRequest:
    """Check everything a run needs before it starts; raises LiveInputError with one line."""
    try:
        ids = encode_prompt(tokenizer, prompt, chat=chat, max_context=max_context)
        spec = spec if isinstance(spec, PolicySpec) else PolicySpec.parse(spec)
        spec.resolve_budget(len(ids))  # budget larger than the prompt, ...
    except (PromptError, PolicyError) as exc:
        raise LiveInputError(str(exc)) from None
    if not 1 <= int(max_new_tokens) <= 4096:
        raise LiveInputError(f"New tokens must be between 1 and 4096, not {max_new_tokens}.")
    if max_context and len(ids) + max_new_tokens > max_context:
        raise LiveInputError(
            f"The prompt ({len(ids)} tokens) plus {max_new_tokens} new tokens exceeds the model's context of {max_context}."
        )
    return LiveRequest(
        spec=spec,
        max_new_tokens=int(max_new_tokens),
        prompt_ids=ids,
        compare=compare,
        prompt_name=prompt_name,
        model_name=model_name,
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
    trace: Trace  # the policy, free generation (partial when stopped)
    full: Trace | None = None  # the full cache, free generation
    forced: Trace | None = None  # the policy teacher-forced on the full cache's output
    wall_s: dict = field(default_factory=dict)  # seconds per phase
    stopped: bool = False

    @property
    def comparison(self) -> Comparison | None:
        if self.full is None:
            return None
        return Comparison(full=self.full, policy=self.trace, forced=self.forced)

    @property
    def first_divergence(self) -> int | None:
        cmp = self.comparison
        return None if cmp is None else cmp.first_divergence


def trace_json(trace: Trace) -> str:
    """The trace as JSON text (what ``Trace.save`` writes to a .json file), for a download."""
    return json.dumps(trace.to_dict(), default=_json_default)


# ------------------------------------------------------------------------------ the job


class LiveJob:
    """Runs a LiveRequest on a background thread; safe to poll from another thread.

    Phases: the policy (streamed into ``policy_tokens``), then, when the request compares, the
    full cache (``full_tokens``) and the policy teacher-forced on the full cache's output.
    ``stop()`` ends the current phase at its next token and skips the rest; the result keeps
    what was generated.
    """

    def __init__(self, model, tokenizer, request: LiveRequest):
        self.model, self.tokenizer, self.request = model, tokenizer, request
        self.phase = "queued"
        self.policy_tokens: list[str] = []
        self.full_tokens: list[str] = []
        self.kv_bytes: tuple[int, int] | None = None  # (policy, full) at the policy's latest step
        self.error: str | None = None
        self.result: LiveResult | None = None
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # control
    def start(self) -> "LiveJob":
        self._thread = threading.Thread(target=self.run, name="kvviz-live", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        return self.phase not in ("done", "stopped", "error")

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def progress(self) -> tuple[float, str]:
        """(fraction done, a line saying what runs now)."""
        n = self.request.max_new_tokens
        phases = ["policy", "full", "forced"] if self.request.compare else ["policy"]
        if not self.running:
            return 1.0, PHASES[self.phase]
        if self.phase == "queued":
            return 0.0, PHASES["queued"]
        done_before = phases.index(self.phase)
        current = {"policy": len(self.policy_tokens), "full": len(self.full_tokens)}.get(self.phase, 0)
        frac = (done_before + min(current, n) / n) / len(phases)
        count = f": {current} / {n} tokens" if self.phase in ("policy", "full") else ""
        return min(frac, 1.0), PHASES[self.phase] + count

    # work
    def run(self) -> None:
        req, walls = self.request, {}
        stop = self._stop.is_set
        trace = full = forced = None
        try:
            runs = engine.compare_runs(
                self.model, self.tokenizer, req.prompt_ids, req.spec,
                max_new_tokens=req.max_new_tokens, model_name=req.model_name, should_stop=stop,
                on_policy_step=self._on_policy_step, on_full_step=lambda e: self.full_tokens.append(e.token),
            )
            self.phase = "policy"
            t = time.perf_counter()
            for phase, result in runs:
                walls[phase] = time.perf_counter() - t
                if phase == "policy":
                    trace = result
                elif phase == "full":
                    full = result
                else:  # a partial teacher-forced run compares nothing
                    forced = None if result.stopped_by == "user" else result
                if phase == "forced" or not req.compare or stop():
                    break
                self.phase = "full" if phase == "policy" else "forced"
                t = time.perf_counter()
            if full is not None and full.stopped_by == "user":
                full = forced = None
        except (PolicyError, PromptError, ValueError) as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001  (shown in the page; the app keeps working)
            self.error = f"{type(exc).__name__}: {exc}"
        if trace is not None:
            self.result = LiveResult(req, trace, full, forced, walls, stopped=stop())
        self.phase = "error" if self.error else "stopped" if stop() else "done"

    def _on_policy_step(self, event: StepEvent) -> None:
        self.policy_tokens.append(event.token)
        self.kv_bytes = (event.kv_bytes, event.kv_bytes_full)
