"""Run bundles: the settings of a run and its Traces in one JSON file, to download and to open again.

A bundle is untrusted input when it comes back (an upload, a file from a colleague), so loading
it checks everything before anything else sees it:

- at most ``MAX_BYTES`` (50 MiB, the app's one upload limit) of UTF-8 JSON, parsed strictly: ``NaN``/``Infinity`` are
  rejected (a missing number is written ``null``), and nothing but JSON is ever read (no pickle,
  no numpy files);
- the schema name and version;
- the type of every field of the settings; every Trace through the one strict reader
  (``kvviz.record.trace_reader``: types, shapes against each other, unknown fields refused);
- a trace file saved on the Live page is told apart and sent there;
- every policy spec through ``PolicySpec.from_dict`` (names, parameters and ranges validated
  again).

Strings stay strings: a prompt or a token holding HTML is loaded as that text, and the pages
escape it where they show it. Problems raise ``BundleError`` with one line fit to show a person.

Layout (version 1)::

    {"schema": "kvviz.run_bundle", "version": 1, "kind": "compare", "created": "2025-...Z",
     "settings": {"model": ..., "prompt_name": ..., "prompt_text": ..., "prompt_params": {...},
                  "chat": true, "policies": [PolicySpec.to_dict(), ...], "max_new_tokens": 16, "step": 3},
     "traces": {"full": Trace.to_dict(), "p1": ..., "p1.forced": ..., ...}}

No torch here (``PolicySpec.from_dict`` loads the policy classes when it validates).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import numpy as np

from kvviz.i18n import N_, _
from kvviz.policies.spec import PolicySpec
from kvviz.record.checks import (
    TraceError, check_bool, check_choice, check_int, check_keys, check_list, check_object, check_scalar, check_str, one_line, show,
)
from kvviz.record.trace import Trace
from kvviz.record.trace_reader import EXTRA_ARRAYS, EXTRA_SCALARS, MAX_FILE_BYTES, check_size, parse_json, trace_from_dict

SCHEMA = "kvviz.run_bundle"
VERSION = 1
MAX_BYTES = MAX_FILE_BYTES  # the one upload limit (50 MiB); three policies on the 585-token passkey prompt take about 5 MB
KINDS = ("compare", "live", "sweep")
KIND_PAGES = {"compare": N_("Compare policies"), "live": N_("Live policy"), "sweep": N_("Tradeoffs")}  # the page that opens each kind
MAX_TRACES = 16
MAX_POLICIES = 8
TRACE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class BundleError(TraceError):
    """A bundle that cannot be opened; the message is one line, fit to show to a person."""


@dataclass
class RunSettings:
    """What a person chose for a run: enough to show it, to put it in a link, or to run it again."""

    model: str  # as the sidebar names it (an id, a directory, a .gguf file)
    prompt_name: str  # an example's name, or "Custom"
    prompt_text: str
    chat: bool
    policies: list[PolicySpec]
    max_new_tokens: int
    prompt_params: dict[str, Any] = field(default_factory=dict)  # e.g. the passkey's filler, depth, seed
    step: int = 0  # the decode step in view
    question_after: bool = False  # query-agnostic: the context compressed alone, then the question appended

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["policies"] = [spec.to_dict() for spec in self.policies]
        return out

    @classmethod
    def from_dict(cls, d: Any) -> "RunSettings":
        d = check_object(d, "settings")
        check_keys(d, {f.name for f in fields(cls)}, "settings", optional={"prompt_params", "step", "question_after"})
        policies = check_list(d["policies"], "settings.policies")
        if not 1 <= len(policies) <= MAX_POLICIES:
            raise BundleError(_("settings.policies: between 1 and {most} policies, not {n}.").format(most=MAX_POLICIES, n=len(policies)))
        params = check_object(d.get("prompt_params", {}), "settings.prompt_params")
        for key, value in params.items():
            check_scalar(value, f"settings.prompt_params.{key}")
        return cls(
            model=check_str(d["model"], "settings.model"),
            prompt_name=check_str(d["prompt_name"], "settings.prompt_name"),
            prompt_text=check_str(d["prompt_text"], "settings.prompt_text"),
            chat=check_bool(d["chat"], "settings.chat"),
            policies=[_spec(p, f"settings.policies[{i}]") for i, p in enumerate(policies)],
            max_new_tokens=check_int(d["max_new_tokens"], "settings.max_new_tokens", lo=1, hi=100_000),
            prompt_params=dict(params),
            step=check_int(d.get("step", 0), "settings.step", lo=0, hi=100_000),
            question_after=check_bool(d.get("question_after", False), "settings.question_after"),
        )


@dataclass
class RunBundle:
    kind: str  # "compare", "live", "sweep": which page made it
    settings: RunSettings
    traces: dict[str, Trace]  # e.g. "full", "p1", "p1.forced"
    created: str = ""  # ISO time, UTC

    def to_json(self, traces_text: str | None = None) -> str:
        """The bundle as strict JSON text (NaN written as null). ``traces_text``: the traces as
        ``traces_json`` wrote them before (they are most of the file; a page writes them once
        per run and only the settings, e.g. the step in view, again)."""
        head = {
            "schema": SCHEMA,
            "version": VERSION,
            "kind": self.kind,
            "created": self.created or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "settings": self.settings.to_dict(),
        }
        text = json.dumps(head, allow_nan=False, separators=(",", ":"))
        return text[:-1] + ',"traces":' + (traces_json(self.traces) if traces_text is None else traces_text) + "}"


# ---------------------------------------------------------------------------------------- writing


def traces_json(traces: dict[str, Trace]) -> str:
    """The ``traces`` part of a bundle, as strict JSON text."""
    return json.dumps({name: trace_to_json(trace) for name, trace in traces.items()}, allow_nan=False, separators=(",", ":"))


def trace_to_json(trace: Trace) -> dict:
    """A Trace as plain JSON values: arrays as lists, NaN as None, float32 at float32 precision."""
    out = {}
    for f in fields(trace):
        value = getattr(trace, f.name)
        if f.name == "extra":
            value = {k: v for k, v in value.items() if k in EXTRA_ARRAYS or k in EXTRA_SCALARS}  # tensors (logprobs) stay out
        out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # StoreError, Protection
        return _plain(dataclasses.asdict(value))
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            # float32 -> the shortest decimal that reads back as the same float32
            flat = [float(str(x)) if math.isfinite(x) else None for x in value.astype(np.float32).ravel()]
            return np.array(flat, dtype=object).reshape(value.shape).tolist() if value.ndim > 1 else flat
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------- reading


def load(data: bytes | str) -> RunBundle:
    """Parse and validate a bundle; raises BundleError (one line) for anything wrong."""
    try:
        check_size(len(data.encode("utf-8") if isinstance(data, str) else data), MAX_BYTES, "kvviz opens bundles")
        return _bundle(parse_json(data))
    except BundleError:
        raise
    except TraceError as exc:  # the shared checks (kvviz.record.checks) raise TraceError
        raise BundleError(str(exc)) from None


def _bundle(doc: Any) -> RunBundle:
    doc = check_object(doc, "the bundle")
    if "schema" not in doc and {"evicted_at_step", "prompt_ids"} <= set(doc):
        raise BundleError(_("This is a trace saved on the {page} page: open it there, under “Open a saved trace”.").format(
            page=_(KIND_PAGES["live"])))
    if doc.get("schema") != SCHEMA:
        raise BundleError(_("Not a kvviz run bundle (schema {schema}, expected '{expected}').").format(
            schema=show(doc.get("schema")), expected=SCHEMA))
    version = doc.get("version")
    if version != VERSION or isinstance(version, bool):
        raise BundleError(_("Bundle version {version} is not supported (this kvviz reads version {supported}).").format(
            version=show(version), supported=VERSION))
    check_keys(doc, {"schema", "version", "kind", "created", "settings", "traces"}, "the bundle", optional={"created"})
    kind = check_choice(doc["kind"], KINDS, "kind")
    settings = RunSettings.from_dict(doc["settings"])
    traces_doc = check_object(doc["traces"], "traces")
    if not 1 <= len(traces_doc) <= MAX_TRACES:
        raise BundleError(_("traces: between 1 and {most} traces, not {n}.").format(most=MAX_TRACES, n=len(traces_doc)))
    traces = {}
    for name, trace in traces_doc.items():
        if not TRACE_NAME.match(name):
            raise BundleError(_("traces: {name} is not a trace name (letters, digits, '.', '_', ':', '-').").format(name=show(name)))
        traces[name] = trace_from_json(trace, f"traces.{name}")
    return RunBundle(kind=kind, settings=settings, traces=traces, created=check_str(doc.get("created", ""), "created", max_len=100))


def page_of(kind: Any) -> str:
    """The page that opens a bundle of this kind (the Compare page for one it cannot tell), in the
    session's language."""
    return _(KIND_PAGES.get(kind, KIND_PAGES["compare"]) if isinstance(kind, str) else KIND_PAGES["compare"])


def trace_from_json(d: Any, where: str = "trace") -> Trace:
    """A Trace from its JSON form, through the one strict reader (kvviz.record.trace_reader), its
    policy spec checked by the policies."""
    return trace_from_dict(d, where, check_spec=check_spec)


def check_spec(value: Any, where: str) -> dict:
    """A PolicySpec's dict, its names and values checked by the policies."""
    return _spec(value, where).to_dict()


def _spec(value: Any, where: str) -> PolicySpec:
    from kvviz.policies import PolicyError

    try:
        return PolicySpec.from_dict(check_object(value, where))
    except PolicyError as exc:
        raise BundleError(f"{where}: {one_line(exc)}") from None
