"""Sweeps: a list of policy specs over ratios (or budgets) on one text, measured against the
full cache. Rows of plain numbers, for the Tradeoffs page, the CLI (``python -m kvviz sweep``)
and the benchmarks.

**Perplexity task** (``"ppl"``):

- the prompt is the first ``context`` tokens of the text, tokenized without a chat template;
  the continuation is the next ``continuation`` tokens, forced one per step (teacher forcing);
- the policy compresses the prompt to its budget right after the prefill and holds the budget
  while the continuation is read (a selector that acts at decode evicts one entry for every
  token that enters). SnapKV compresses the prompt only and keeps every continuation token, as
  in the paper: its peak bytes show that;
- perplexity = exp(mean negative log-likelihood of the continuation tokens), the first scored
  by the prefill's logits;
- mean KL(full || policy) and top-1 agreement with the full cache over the same steps. The full
  cache's teacher-forced run (its log-probabilities) is computed once per text and reused;
- a point whose cache evicts nothing after the prompt (the full-cache reference, SnapKV,
  PyramidKV, every prompt-only selector) reads its continuation in forwards of 256 tokens
  (``kvviz.runtime.forced_chunks``): the same entries, about one prefill's time instead of one
  decode step per token; its log-probabilities differ from a step-by-step run's by rounding only;
- KV bytes at the last step and at the peak, against the full cache at the last step.

**Passkey task** (``"passkey"``): for each filler length and needle depth, the prompt of
``kvviz.record.examples.passkey_prompt`` through the chat template, greedy decoding of a few tokens under
each policy; found = the key's digits appear in the answer. ``question`` says when the policy
sees the question ("What is the pass key?", the prompt's last paragraph): "with" the prompt
(compressed whole), "after" the context is compressed alone (query-agnostic: the question is
appended to the compressed cache; a ratio is of the context), or "both", each policy's series
twice, the second named "… · question after".

**Retrievers** (quest, sparq, simhash, and one composed after a selector, ``snapkv+quest``):
a point's budget or ratio is the retriever's read budget, the entries each decode step reads per
layer and KV head, so the budget axis means what the attention reads for eviction and retrieval
alike. A budget b reads b; a ratio r reads ``ratio_budget(r, prompt tokens)`` of each run's
prompt (the rounding of an eviction's ratio). A composed selector keeps what its spec says (its
own budget or ratio, else its default ratio); a spec that names ``read_budget`` runs at that read
budget only. Their rows' ``budget`` is the read budget.

On a GPU in bf16 the full cache's own teacher-forced run is not reproducible to the last bit (on an
H200, three runs of 512 + 96 tokens gave log-probabilities that first differed at step 8 or 74, on
the eager path too), so ``kl_full`` (up to 2.5% in five sweeps) and ``top1_agree`` move between two sweeps of the
same text; ``run(..., reuse=an_earlier_sweep)`` compares against the same reference.

On a GPU the points run several at once (``kvviz.runtime.lanes``: each on its own thread and CUDA
stream, ``KVVIZ_LANES`` at a time, default 4), after the full-cache reference; each run gives what
it gives alone and the rows keep the plan's order, but a row's ``seconds`` is its own wall time
while others ran beside it. On a CPU one after another.

Every point is checked before the first forward (a budget larger than a prompt, a window that
leaves no room, ...), so a bad sweep fails at once with one message.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from kvviz.i18n import N_, _
from kvviz.record import examples as data
from kvviz.runtime import lanes
from kvviz.runtime.inputs import check_run, prompt_ids
from kvviz.runtime.jobs import Stopped
from kvviz.record.metrics import mean_or_nan, perplexity
from kvviz.policies import PolicyError
from kvviz.policies.params import ratio_budget
from kvviz.policies.selector import Retriever
from kvviz.policies.spec import BUDGET_KEYS, PolicySpec
from kvviz.sweep.rows import PASSKEY_COLUMNS, PPL_COLUMNS, SweepRow, rows_csv  # noqa: F401  (re-exported)
from kvviz.record.text import PromptError

TASKS = ("ppl", "passkey")
QUESTION_MODES = ("with", "after", "both")  # passkey: the policy compresses with the question, before it, or both
AFTER = " · question after"  # a series compressed before its question was known


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class SweepSettings:
    """Everything that decides a sweep's numbers (hashable: pages key their caches by it)."""

    policies: tuple[str, ...]  # spec texts, "snapkv:window=8,kernel=7"; "full" needs no ratio
    ratios: tuple[float, ...] = ()  # kept fraction of the prompt; or
    budgets: tuple[int, ...] = ()  # kept entries per layer and KV head
    task: str = "ppl"
    text: str = ""  # ppl: the text read (no chat template)
    context: int = 256  # ppl: prompt tokens
    continuation: int = 64  # ppl: forced tokens
    depths: tuple[float, ...] = (0.1, 0.5, 0.9)  # passkey: needle depth, 0 = start of the filler
    lengths: tuple[int, ...] = (500,)  # passkey: filler tokens
    new_tokens: int = 12  # passkey: greedy tokens of the answer
    passkey_seed: int = 0
    question: str = "with"  # passkey: one of QUESTION_MODES

    def describe(self) -> dict:
        """The settings as plain values, for reports and JSON (the text by its length only)."""
        out = dataclasses.asdict(self)
        out["policies"], out["ratios"], out["budgets"] = list(self.policies), list(self.ratios), list(self.budgets)
        out["text"] = f"{len(self.text):,} characters"
        if self.task == "ppl":
            for k in ("depths", "lengths", "new_tokens", "passkey_seed", "question"):
                out.pop(k)
        else:
            for k in ("text", "context", "continuation"):
                out.pop(k)
        return out


NUMBER_FIELDS = (N_("Ratios"), N_("Budgets"), N_("Depths"), N_("Filler lengths"))  # the names Tradeoffs passes


def parse_numbers(text: str | None, kind: type, what: str) -> tuple:
    """'0.1, 0.25' -> (0.1, 0.25); a one-line ValueError naming ``what`` otherwise (in the
    session's language: one of NUMBER_FIELDS translated, any other name as given)."""
    if text is None:
        return ()
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    shown = _(what) if what in NUMBER_FIELDS else what
    try:
        values = tuple(kind(t) for t in items)
    except ValueError:
        message = (_("{what}: expected whole numbers separated by commas, got '{text}'.") if kind is int
                   else _("{what}: expected numbers separated by commas, got '{text}'."))
        raise ValueError(message.format(what=shown, text=text)) from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(_("{what}: give finite numbers separated by commas, got '{text}'.").format(what=shown, text=text))
    return values


def names_budget(text: str) -> bool:
    """Whether a spec text sets its own budget or ratio (``h2o:ratio=0.1``): then the sweep runs
    it at that point only."""
    _, _, rest = text.partition(":")
    return any(item.partition("=")[0].strip() in BUDGET_KEYS for item in rest.split(","))


def names_read_budget(text: str) -> bool:
    """Whether a spec text sets its retriever's read budget (``quest:read_budget=32``,
    ``snapkv+quest:quest.read_budget=32``): then the sweep runs it at that read budget only."""
    _, _, rest = text.partition(":")
    return any(item.partition("=")[0].strip().rpartition(".")[2] == "read_budget" for item in rest.split(","))


def reader_of(spec: PolicySpec) -> Retriever | None:
    """The spec's retriever (alone, or composed after a selector), or None."""
    pipeline = spec.pipeline()
    policy = pipeline.reader or pipeline.selector
    return policy if isinstance(policy, Retriever) else None


def reading(spec: PolicySpec, read_budget: int) -> PolicySpec:
    """``spec`` with its retriever reading ``read_budget`` entries per step; its other
    parameters, and a composed selector's budget or ratio, as they are."""
    reader = reader_of(spec)
    if reader is None:
        raise PolicyError(_("{name} reads no read set: it has no read budget.").format(name=spec.name))
    params = spec.params_dict()
    params[reader.name] = {**params.get(reader.name, {}), "read_budget": int(read_budget)}
    return PolicySpec.create(spec.name, params, budget=spec.budget, ratio=spec.ratio)


def points(settings: SweepSettings, prompt_len: int | None = None) -> list[tuple[PolicySpec, str]]:
    """Every point of the sweep with its series name: each policy at each ratio (or budget); a
    policy that takes no budget (``full``, a store alone) or names its own runs once. A
    retriever's point sets its read budget (the module's docstring); a ratio needs the prompt's
    ``prompt_len`` tokens to become one (without it, the retriever's spec as written stands for
    its ratio points, for checking and counting). Raises PolicyError."""
    if settings.task not in TASKS:
        raise PolicyError(_("task must be one of {choices}, not {value}.").format(choices=", ".join(TASKS), value=repr(settings.task)))
    if not settings.policies:
        raise PolicyError(_("Give at least one policy."))
    if settings.ratios and settings.budgets:
        raise PolicyError(_("Give ratios or budgets, not both."))
    out: list[tuple[PolicySpec, str]] = []
    for text in settings.policies:
        spec = PolicySpec.parse(text)
        retriever = reader_of(spec) is not None
        if retriever and names_read_budget(text):
            grid = [spec]  # its own read budget (a composed selector keeps its spec's or default ratio)
        elif retriever and settings.budgets and not settings.ratios:
            grid = [reading(spec, int(b)) for b in settings.budgets]
        elif retriever and settings.ratios and not settings.budgets:
            grid = [spec] if prompt_len is None else [reading(spec, ratio_budget(float(r), prompt_len)) for r in settings.ratios]
        elif not spec.takes_budget or names_budget(text):
            grid = [spec]
        elif settings.budgets:
            grid = [spec.with_budget(budget=int(b)) for b in settings.budgets]
        elif settings.ratios:
            grid = [spec.with_budget(ratio=float(r)) for r in settings.ratios]
        else:
            raise PolicyError(_("'{text}' takes a budget: give ratios or budgets (or write it into the spec, e.g. {name}:ratio=0.25).").format(
                text=text, name=spec.name))
        seen = {p for p, _ in out}
        out.extend((p, series_text(text)) for p in grid if p not in seen)
    return out


def expand(settings: SweepSettings) -> list[PolicySpec]:
    """Every point of the sweep (see ``points``)."""
    return [spec for spec, _ in points(settings)]


def series_text(text: str) -> str:
    """A spec text as its user wrote it, without budget or ratio and spaces: ``snapkv:window=32``."""
    name, _, rest = text.partition(":")
    items = []
    for item in rest.split(","):
        key, _, value = item.partition("=")
        if key.strip() and key.strip() not in BUDGET_KEYS:
            items.append(f"{key.strip()}={value.strip()}")
    return name.strip() + (":" + ",".join(items) if items else "")


def params_text(spec: PolicySpec) -> str:
    """The parameters that differ from their defaults, in the text form: ``window=8,kernel=7``."""
    return dataclasses.replace(spec, budget=None, ratio=None).to_text().partition(":")[2]


def series_name(spec: PolicySpec) -> str:
    """The policy and its parameters without the budget: one line on a Pareto chart."""
    return dataclasses.replace(spec, budget=None, ratio=None).to_text()


# ------------------------------------------------------------------------------ the plan


@dataclass
class PlannedRun:
    spec: PolicySpec | None  # None: the full-cache reference of the ppl task
    prompt_ids: list[int]
    steps: int  # decode steps (forced or generated at most)
    series: str = ""
    depth: float | None = None
    length: int | None = None
    passkey: str = ""
    question_at: int | None = None  # passkey, question after: where the question starts

    @property
    def label(self) -> str:
        if self.spec is None:
            what = "full cache (reference)"
        elif self.spec.budget is not None:
            what = f"{self.series} · {self.spec.budget}/head"
        else:
            what = self.series + ("" if self.spec.ratio is None else f" · {100 * self.spec.ratio:g}%")
        where = f" · depth {self.depth:g}, {self.length} filler tokens" if self.depth is not None else ""
        return what + where



_WHERE = re.compile(r" · depth (?P<depth>\S+), (?P<length>\d+) filler tokens$")
_PER_HEAD = re.compile(r" · (?P<budget>\d+)/head$")


def shown_label(label: str) -> str:
    """A run's ``label`` (English: the rows and the progress keep it) in the session's language:
    the reference's name, the per-head budget and the needle's place translated, the series as written."""
    where = ""
    found = _WHERE.search(label)
    if found:
        label, where = label[: found.start()], _(" · depth {depth}, {length} filler tokens").format(**found.groupdict())
    if label == "full cache (reference)":
        return _("full cache (reference)") + where
    found = _PER_HEAD.search(label)
    if found:
        label = label[: found.start()] + _(" · {budget}/head").format(**found.groupdict())
    return label + where

@dataclass
class Plan:
    settings: SweepSettings
    runs: list[PlannedRun]
    forced_ids: list[int] = field(default_factory=list)  # ppl: the continuation


def plan(tokenizer, settings: SweepSettings, max_context: int | None = None) -> Plan:
    """Every run of the sweep, in order, checked; raises PolicyError or PromptError."""
    points(settings)  # bad specs fail before any text is read
    if settings.task == "ppl":
        return _plan_ppl(tokenizer, settings, max_context)
    return _plan_passkey(tokenizer, settings, max_context)


def ppl_tokens(tokenizer, text: str, context: int, continuation: int) -> tuple[list[int], list[int]]:
    """(prompt, continuation): the first ``context`` tokens of ``text`` and the next
    ``continuation`` (no chat template)."""
    if context < 1 or continuation < 1:
        raise PromptError(_("context and continuation must be at least 1 token (got {context} and {continuation}).").format(
            context=context, continuation=continuation))
    if not text or not text.strip():
        raise PromptError(_("The text is empty."))
    ids = [int(i) for i in tokenizer(text).input_ids]
    if len(ids) < context + continuation:
        raise PromptError(_("The text has {n} tokens; context {context} plus continuation {continuation} needs {need}.").format(
            n=len(ids), context=context, continuation=continuation, need=context + continuation))
    return ids[:context], ids[context : context + continuation]


def _plan_ppl(tokenizer, settings, max_context) -> Plan:
    prompt, forced = ppl_tokens(tokenizer, settings.text, settings.context, settings.continuation)
    runs = [PlannedRun(None, prompt, len(forced), "full")]
    for spec, series in points(settings, len(prompt)):
        check_run(len(prompt), len(forced), max_context=max_context, specs=[spec], tokens_name="continuation tokens")
        runs.append(PlannedRun(spec, prompt, len(forced), series))
    return Plan(settings, runs, forced)


def _plan_passkey(tokenizer, settings, max_context) -> Plan:
    if not settings.depths or not settings.lengths:
        raise PolicyError(_("The passkey task needs at least one depth and one filler length."))
    if settings.new_tokens < 1:
        raise PolicyError(_("new_tokens must be at least 1."))
    if settings.question not in QUESTION_MODES:
        raise PolicyError(_("question must be one of {choices}, not {value}.").format(choices=", ".join(QUESTION_MODES), value=repr(settings.question)))
    from kvviz.record.question import question_start

    runs = []
    for length in settings.lengths:
        for depth in settings.depths:
            try:
                text, key = data.passkey_prompt(int(length), float(depth), seed=settings.passkey_seed)
            except ValueError as exc:
                raise PromptError(str(exc)) from None
            ids = prompt_ids(tokenizer, text, chat=True, max_context=max_context)
            q = question_start(tokenizer, ids, text) if settings.question != "with" else None
            for spec, series in points(settings, len(ids)):
                check_run(len(ids), settings.new_tokens, max_context=max_context, specs=[spec])
                if settings.question != "after":
                    runs.append(PlannedRun(spec, ids, settings.new_tokens, series, float(depth), int(length), key))
                if q is not None:  # settings.question is "after" or "both"
                    spec.resolve_budget(q)  # a budget larger than the context fails before the first forward
                    runs.append(PlannedRun(spec, ids, settings.new_tokens, series + AFTER, float(depth), int(length), key, q))
    return Plan(settings, runs)


# ------------------------------------------------------------------------------ running


@dataclass
class Progress:
    done: int  # runs finished
    total: int
    label: str  # the run starting now ("" when all are done)
    elapsed_s: float


@dataclass
class SweepResult:
    settings: SweepSettings
    rows: list[SweepRow]
    reference: dict | None = None  # ppl: the full cache's ppl, kv_bytes_full, seconds
    device: str = ""
    dtype: str = ""
    model: str = ""
    seconds: float = 0.0
    stopped: bool = False  # stopped by the user: the rows finished before the stop
    # the full cache's (steps, vocab) log-probabilities and the ids they are of (prompt, forced), for
    # a later sweep of the same text (``run(..., keep_reference=True)``, then ``run(..., reuse=...)``); not saved
    reference_logprobs: object = field(default=None, repr=False, compare=False)
    reference_ids: tuple = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "settings": self.settings.describe(), "model": self.model, "device": self.device, "dtype": self.dtype,
            "seconds": self.seconds, "stopped": self.stopped, "reference": self.reference,
            "rows": [r.to_dict() for r in self.rows],
        }


def run(
    model,
    tokenizer,
    settings: SweepSettings,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    model_name: str = "",
    max_context: int | None = None,
    reuse: SweepResult | None = None,
    keep_reference: bool = False,
) -> SweepResult:
    """Run every point of the sweep on ``model``; see the module's docstring for what each task
    measures. ``should_stop`` is polled between runs and between tokens: a stopped sweep returns
    the rows finished so far with ``stopped=True``. ``keep_reference``: the result keeps the full
    cache's log-probabilities (steps x vocabulary floats, on the model's device). ``reuse``: an
    earlier sweep on this model, run with ``keep_reference``, whose full-cache reference is taken
    as this one's when it was of the same prompt and forced tokens
    (on a GPU, bf16 runs of the full cache differ in their last bits from one run to the next: two
    sweeps compared row by row need the same reference)."""
    the_plan = plan(tokenizer, settings, max_context=max_context)
    should_stop = should_stop or (lambda: False)
    result = SweepResult(settings, [], model=model_name, device=str(next(model.parameters()).device), dtype=str(model.dtype).replace("torch.", ""))
    t0 = time.perf_counter()
    reference_logprobs = None
    done = 0

    def one(index: int):
        if should_stop():
            raise Stopped
        return run_one(model, tokenizer, the_plan, index, reference_logprobs, should_stop=should_stop, model_name=model_name)

    def progress(label: str) -> None:
        if on_progress is not None:
            on_progress(Progress(done, len(the_plan.runs), label, time.perf_counter() - t0))

    first = [i for i, p in enumerate(the_plan.runs) if p.spec is None]  # the full-cache reference every ppl run needs
    rest = [i for i in range(len(the_plan.runs)) if i not in first]
    try:
        for index in first:
            progress(the_plan.runs[index].label)
            ids = (tuple(the_plan.runs[index].prompt_ids), tuple(the_plan.forced_ids))
            if reuse is not None and reuse.reference_logprobs is not None and reuse.reference_ids == ids:
                result.reference, reference_logprobs = reuse.reference, reuse.reference_logprobs
            else:
                result.reference, reference_logprobs = one(index)
            if keep_reference:
                result.reference_logprobs, result.reference_ids = reference_logprobs, ids
            done += 1
        # the points, several at once on a GPU (kvviz.runtime.lanes), rows in the plan's order
        labels = [the_plan.runs[i].label for i in rest]
        if rest:
            progress(labels[0])
        for k, (row, _) in enumerate(lanes.in_order(model, one, rest, lanes.count(model))):
            result.rows.append(row)
            done += 1
            if k + 1 < len(rest):
                progress(labels[k + 1])
    except Stopped:
        result.stopped = True
    result.seconds = time.perf_counter() - t0
    if on_progress is not None:
        on_progress(Progress(done, len(the_plan.runs), "", result.seconds))
    return result


def run_one(model, tokenizer, the_plan: Plan, index: int, reference_logprobs=None, *, should_stop=None, model_name: str = ""):
    """Run point ``index`` of a plan: (its row, None), or for the ppl task's full-cache reference
    (the reference dict, its log-probabilities), which every later ppl run needs. Raises Stopped."""
    from kvviz.runtime import engine

    planned, settings = the_plan.runs[index], the_plan.settings
    # no fused policy steps: each point would build its own (kvviz.runtime.fused_steps), seconds of
    # compiling for a run of about a second (the model's fused blocks, one build, are used)
    common = dict(model_name=model_name, should_stop=should_stop or (lambda: False), top_k=1, fused_steps=False)
    t = time.perf_counter()
    if settings.task == "ppl" and planned.spec is None:  # the full cache, once per text
        trace = engine.run(model, tokenizer, planned.prompt_ids, "full", forced_ids=the_plan.forced_ids, keep_logprobs=True, **common)
        _check_complete(trace)
        logprobs = trace.extra.pop("logprobs")
        reference = {
            "ppl": perplexity(trace.chosen_logprob), "kv_bytes_full": int(trace.kv_bytes_full[-1]),
            "seconds": time.perf_counter() - t, "context": len(planned.prompt_ids), "continuation": trace.n_steps,
        }
        return reference, logprobs
    if settings.task == "ppl":
        trace = engine.run(
            model, tokenizer, planned.prompt_ids, planned.spec, forced_ids=the_plan.forced_ids,
            reference_logprobs=reference_logprobs, **common,
        )
        _check_complete(trace)
        return ppl_row(planned, trace, time.perf_counter() - t), None
    trace = engine.run(
        model, tokenizer, planned.prompt_ids, planned.spec, max_new_tokens=planned.steps, question_at=planned.question_at, **common
    )
    _check_complete(trace)
    return passkey_row(planned, trace, time.perf_counter() - t), None


def _check_complete(trace) -> None:
    if trace.stopped_by == "user":
        raise Stopped


def _row_basics(planned: PlannedRun, trace, seconds: float) -> dict:
    spec = planned.spec
    reader = None if spec is None else reader_of(spec)  # a retriever's budget is what each step reads
    return dict(
        series=planned.series, policy=spec.name, params=params_text(spec), ratio=spec.ratio if reader is None else None,
        budget=trace.budget if reader is None else reader.read_budget,
        kv_bytes=int(trace.kv_bytes[-1]), kv_bytes_peak=int(max(trace.kv_bytes)), kv_bytes_full=int(trace.kv_bytes_full[-1]),
        seconds=float(seconds), prompt_tokens=trace.prompt_len,
    )


def ppl_row(planned: PlannedRun, trace, seconds: float) -> SweepRow:
    """The row of a teacher-forced run that had the full cache's log-probabilities as reference."""
    return SweepRow(
        "ppl", **_row_basics(planned, trace, seconds), ppl=perplexity(trace.chosen_logprob),
        kl_full=mean_or_nan(trace.kl_to_reference), top1_agree=mean_or_nan(trace.top1_agreement),
    )


def passkey_row(planned: PlannedRun, trace, seconds: float) -> SweepRow:
    answer = trace.generated_text.strip()
    return SweepRow(
        "passkey", **_row_basics(planned, trace, seconds), depth=planned.depth, length=planned.length,
        found=planned.passkey in answer, answer=answer,
    )
