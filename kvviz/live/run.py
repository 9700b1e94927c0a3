"""A live run of one policy, for the Live policy page: check the input (``prepare``), then the
request a ``kvviz.live.job.LiveJob`` runs on a background thread, and the ``LiveResult`` it
leaves (the policy's run, and when it compares, the full cache's and the policy teacher-forced on
the full cache's output). Nothing here imports streamlit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kvviz.i18n import N_, _
from kvviz.policies.spec import PolicySpec, saved_budget_notes, shown_budget_notes
from kvviz.record.text import PromptError, encode_prompt
from kvviz.record.trace import Trace
from kvviz.runs import store as run_store
from kvviz.runtime.comparison import AgainstFull
from kvviz.runtime.inputs import InputError, check_run, prompt_ids

STOPPED_IN = {  # N_-marked: the page shows them translated
    "policy": N_("Stopped during the policy's own run: the output below is partial, and there is no comparison."),
    "full": N_("The policy's run finished; Stop came during the full cache's run, so there is no comparison with it."),
    "forced": N_("The policy's and the full cache's runs finished (the outputs compare below); Stop came while "
                 "scoring the policy on the full cache's output, so there is no per-step KL or top-1 agreement."),
}
STOPPED_IN_PREFILL = N_("Stopped while the model read the prompt (the prefill), before the policy's first token: nothing was generated.")

QUESTION_NOTE = N_("The context (tokens 0-{last}) is compressed alone; the question ({n} tokens) is appended after.")

LONG_PROMPT_CPU = 1500  # tokens: beyond this a CPU prefill takes long enough to warn about
MAX_NEW_TOKENS = 256
MAX_REQUEST_TOKENS = 4096  # new tokens a request may ask for (the page's slider stops at MAX_NEW_TOKENS)


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
    question_at: int | None = None  # query-agnostic: the context is compressed alone, then the question (from here) is fed
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
            "question_at": self.question_at,
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
    question_after: bool = False,
) -> LiveRequest:
    """Check everything a run needs before it starts; raises InputError with one line."""
    ids = prompt_ids(tokenizer, prompt, chat=chat, max_context=max_context)
    try:
        spec = spec if isinstance(spec, PolicySpec) else PolicySpec.parse(spec)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    check_run(len(ids), int(max_new_tokens), max_context=max_context, specs=[spec], max_new_tokens=MAX_REQUEST_TOKENS)
    question_at = None
    if question_after:
        from kvviz.record.question import question_start

        try:
            question_at = question_start(tokenizer, ids, prompt)
            spec.resolve_budget(question_at)  # a budget larger than the context alone
        except ValueError as exc:
            raise InputError(str(exc)) from None
    notes = saved_budget_notes(spec, question_at or len(ids))  # saved in English; shown as captions with the result
    if question_at is not None:
        notes.append(QUESTION_NOTE.format(last=question_at - 1, n=len(ids) - question_at))  # saved in the run's JSON: English
    return LiveRequest(
        spec=spec, max_new_tokens=int(max_new_tokens), prompt_ids=ids, compare=compare,
        prompt_name=prompt_name, model_name=model_name, passkey=passkey, notes=notes, question_at=question_at,
    )


def shown_notes(req: LiveRequest) -> list[str]:
    """The request's notes as the page shows them: the saved budget notes and question-after-the-context
    note (English) in the session's language; any other as saved."""
    notes = shown_budget_notes(req.spec, req.question_at or len(req.prompt_ids), list(req.notes))
    if req.question_at is None:
        return notes
    values = dict(last=req.question_at - 1, n=len(req.prompt_ids) - req.question_at)
    saved = QUESTION_NOTE.format(**values)
    return [_(QUESTION_NOTE).format(**values) if note == saved else note for note in notes]


def prompt_length(tokenizer, prompt: str, chat: bool) -> int | None:
    """Tokens of the prompt as a run would encode it; None when it cannot be encoded (empty)."""
    try:
        return len(encode_prompt(tokenizer, prompt, chat=chat))
    except PromptError:
        return None


# ------------------------------------------------------------------------------ results


REUSED = "full, reused"  # LiveResult.wall_s: the full cache's run taken from an earlier run of the prompt (kvviz.live.job)
CHUNKED = "forced, chunked"  # LiveResult.wall_s: the forced run read in chunks (kvviz.runtime.forced_chunks)


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
