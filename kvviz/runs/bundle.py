"""Run bundles: the settings of a run and its Traces in one JSON file, to download and to open again.

A bundle is untrusted input when it comes back (an upload, a file from a colleague), so loading
it checks everything before anything else sees it:

- at most ``MAX_BYTES`` (20 MB) of UTF-8 JSON, parsed strictly: ``NaN``/``Infinity`` are
  rejected (a missing number is written ``null``), and nothing but JSON is ever read (no pickle,
  no numpy files);
- the schema name and version;
- the type of every field of the settings and of every Trace, and the Trace shapes against each
  other (array lengths against ``n_layers``, ``n_kv_heads``, positions and steps);
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

from kvviz.policies.spec import PolicySpec
from kvviz.record.trace import Protection, StoreError, Trace

SCHEMA = "kvviz.run_bundle"
VERSION = 1
MAX_BYTES = 20 * 1024 * 1024  # 20 MB: three policies on the 585-token passkey prompt take about 5 MB
KINDS = ("compare", "live", "sweep")
MAX_TRACES = 16
MAX_POLICIES = 8
TRACE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
STOPPED_BY = ("eos", "max_new_tokens", "user")
FLOAT_ARRAYS = ("scores", "lost_mass", "topk_probs", "entropy", "chosen_logprob", "kl_to_reference")


class BundleError(ValueError):
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

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["policies"] = [spec.to_dict() for spec in self.policies]
        return out

    @classmethod
    def from_dict(cls, d: Any) -> "RunSettings":
        d = _object(d, "settings")
        _keys(d, {f.name for f in fields(cls)}, "settings", optional={"prompt_params", "step"})
        policies = _list(d["policies"], "settings.policies")
        if not 1 <= len(policies) <= MAX_POLICIES:
            raise BundleError(f"settings.policies: between 1 and {MAX_POLICIES} policies, not {len(policies)}.")
        params = _object(d.get("prompt_params", {}), "settings.prompt_params")
        for key, value in params.items():
            _scalar(value, f"settings.prompt_params.{key}")
        return cls(
            model=_str(d["model"], "settings.model"),
            prompt_name=_str(d["prompt_name"], "settings.prompt_name"),
            prompt_text=_str(d["prompt_text"], "settings.prompt_text"),
            chat=_bool(d["chat"], "settings.chat"),
            policies=[_spec(p, f"settings.policies[{i}]") for i, p in enumerate(policies)],
            max_new_tokens=_int(d["max_new_tokens"], "settings.max_new_tokens", lo=1, hi=100_000),
            prompt_params=dict(params),
            step=_int(d.get("step", 0), "settings.step", lo=0),
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
    size = len(data.encode("utf-8") if isinstance(data, str) else data)
    if size > MAX_BYTES:
        raise BundleError(f"The file is {size / 1e6:.1f} MB; a bundle may be at most {MAX_BYTES / 1024 / 1024:.0f} MB.")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError("The file is not UTF-8 text; a bundle is a JSON file.") from None
    try:
        doc = json.loads(data, parse_constant=_reject_constant)
    except BundleError:
        raise
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"The file is not valid JSON ({_one_line(exc)}).") from None
    doc = _object(doc, "the bundle")
    if doc.get("schema") != SCHEMA:
        raise BundleError(f"Not a kvviz run bundle (schema {_show(doc.get('schema'))}, expected '{SCHEMA}').")
    version = doc.get("version")
    if version != VERSION or isinstance(version, bool):
        raise BundleError(f"Bundle version {_show(version)} is not supported (this kvviz reads version {VERSION}).")
    _keys(doc, {"schema", "version", "kind", "created", "settings", "traces"}, "the bundle", optional={"created"})
    kind = _str(doc["kind"], "kind")
    if kind not in KINDS:
        raise BundleError(f"kind must be one of {', '.join(KINDS)}, not {_show(kind)}.")
    settings = RunSettings.from_dict(doc["settings"])
    traces_doc = _object(doc["traces"], "traces")
    if not 1 <= len(traces_doc) <= MAX_TRACES:
        raise BundleError(f"traces: between 1 and {MAX_TRACES} traces, not {len(traces_doc)}.")
    traces = {}
    for name, trace in traces_doc.items():
        if not TRACE_NAME.match(name):
            raise BundleError(f"traces: {_show(name)} is not a trace name (letters, digits, '.', '_', ':', '-').")
        traces[name] = trace_from_json(trace, f"traces.{name}")
    return RunBundle(kind=kind, settings=settings, traces=traces, created=_str(doc.get("created", ""), "created"))


def trace_from_json(d: Any, where: str = "trace") -> Trace:
    """A Trace from its JSON form, every field's type and every array's shape checked."""
    d = _object(d, where)
    names = {f.name for f in fields(Trace)}
    _keys(d, names, where, optional={"kl_to_reference", "top1_agreement", "teacher_forced", "stopped_by", "store_error", "protection", "spec", "extra"})
    w = lambda name: f"{where}.{name}"  # noqa: E731
    n_layers = _int(d["n_layers"], w("n_layers"), lo=1, hi=4096)
    n_kv = _int(d["n_kv_heads"], w("n_kv_heads"), lo=1, hi=4096)
    prompt_ids = _ints(d["prompt_ids"], w("prompt_ids"), lo=0)
    generated_ids = _ints(d["generated_ids"], w("generated_ids"), lo=0)
    if not prompt_ids or not generated_ids:
        raise BundleError(f"{where}: a trace needs prompt tokens and at least one generated token.")
    n_pos, n_steps = len(prompt_ids) + len(generated_ids), len(generated_ids)
    tokens = _list(d["tokens"], w("tokens"))
    if len(tokens) != n_pos:
        raise BundleError(f"{w('tokens')}: {len(tokens)} tokens for {n_pos} positions (prompt + generated).")
    evicted = _array(d["evicted_at_step"], (n_layers, n_kv, n_pos), "int", w("evicted_at_step"))
    if evicted.size and (evicted.min() < -1 or evicted.max() >= n_steps):
        raise BundleError(f"{w('evicted_at_step')}: steps must be -1 (never) or between 0 and {n_steps - 1}.")
    topk_ids = _array(d["topk_ids"], None, "int", w("topk_ids"), ndim=2)
    k = topk_ids.shape[1]
    if topk_ids.shape[0] != n_steps:
        raise BundleError(f"{w('topk_ids')}: {topk_ids.shape[0]} rows for {n_steps} steps.")
    extra = _object(d.get("extra", {}), w("extra"))
    known = set(EXTRA_ARRAYS) | set(EXTRA_SCALARS)
    _keys(extra, known, w("extra"), optional=known)
    out = dict(
        model=_str(d["model"], w("model")),
        device=_str(d["device"], w("device")),
        dtype=_str(d["dtype"], w("dtype")),
        policy=_str(d["policy"], w("policy")),
        params=_params(d["params"], w("params")),
        prompt_ids=prompt_ids,
        generated_ids=generated_ids,
        tokens=[_str(t, f"{w('tokens')}[{i}]") for i, t in enumerate(tokens)],
        n_layers=n_layers,
        n_kv_heads=n_kv,
        n_q_heads=_int(d["n_q_heads"], w("n_q_heads"), lo=1, hi=4096),
        head_dim=_int(d["head_dim"], w("head_dim"), lo=1, hi=65536),
        budget=_optional(d["budget"], lambda v: _int(v, w("budget"), lo=1)),
        layer_budgets=_layer_budgets(d["layer_budgets"], n_layers, w("layer_budgets")),
        evicted_at_step=evicted.astype(np.int32),
        scores=_array(d["scores"], (n_layers, n_kv, n_pos), "float", w("scores")),
        kv_bytes=_ints(d["kv_bytes"], w("kv_bytes"), lo=0, length=n_steps),
        kv_bytes_full=_ints(d["kv_bytes_full"], w("kv_bytes_full"), lo=0, length=n_steps),
        bookkeeping_bytes=_ints(d["bookkeeping_bytes"], w("bookkeeping_bytes"), lo=0, length=n_steps),
        lost_mass=_array(d["lost_mass"], (n_steps, n_layers), "float", w("lost_mass")),
        topk_ids=topk_ids.astype(np.int64),
        topk_probs=_array(d["topk_probs"], (n_steps, k), "float", w("topk_probs")),
        entropy=_array(d["entropy"], (n_steps,), "float", w("entropy")),
        chosen_logprob=_array(d["chosen_logprob"], (n_steps,), "float", w("chosen_logprob")),
        timings=_timings(d["timings"], w("timings")),
        kl_to_reference=_optional(d.get("kl_to_reference"), lambda v: _array(v, (n_steps,), "float", w("kl_to_reference"))),
        top1_agreement=_optional(d.get("top1_agreement"), lambda v: _array(v, (n_steps,), "bool", w("top1_agreement"))),
        teacher_forced=_bool(d.get("teacher_forced", False), w("teacher_forced")),
        stopped_by=_choice(d.get("stopped_by", "max_new_tokens"), STOPPED_BY, w("stopped_by")),
        store_error=_optional(d.get("store_error"), lambda v: _store_error(v, n_layers, w("store_error"))),
        protection=_protection(d.get("protection", {}), w("protection")),
        spec=_optional(d.get("spec"), lambda v: _spec(v, w("spec")).to_dict()),
        extra={
            name: EXTRA_SCALARS[name](v, f"{w('extra')}.{name}") if name in EXTRA_SCALARS
            else _array(v, EXTRA_ARRAYS[name](n_steps, n_layers, n_kv), "float", f"{w('extra')}.{name}")
            for name, v in extra.items()
        },
    )
    return Trace(**out)


# Arrays a Trace may carry in ``extra``: name -> its shape from (steps, layers, kv_heads)
EXTRA_ARRAYS = {
    "score_cut": lambda steps, layers, kv: (steps, layers, kv),  # kvviz.compare.run: the lowest score kept on merit
}


# Single values a Trace may carry in ``extra``: name -> its check (kvviz.runtime.engine: how the cache was laid out)
EXTRA_SCALARS = {
    "fixed_capacity": lambda v, where: _bool(v, where),  # held in buffers of fixed capacity after the prefill
    "kv_bytes_reserved": lambda v, where: _int(v, where, lo=0),  # what those buffers take
}


# ---------------------------------------------------------------------------------------- checks


def _reject_constant(name: str):
    raise BundleError(f"The file holds {name}, which strict JSON does not allow (write null for a missing number).")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160]


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


EXPECTED = {dict: "a JSON object", list: "a list", str: "a string", bool: "true or false"}


def _expect(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise BundleError(f"{where} must be {EXPECTED[kind]}, not {_type(value)}.")
    return value


def _object(value: Any, where: str) -> dict:
    return _expect(value, dict, where)


def _list(value: Any, where: str) -> list:
    return _expect(value, list, where)


def _keys(d: dict, allowed: set[str], where: str, optional: set[str] = frozenset()) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise BundleError(f"{where}: unknown field {_show(unknown[0])}.")
    missing = sorted(allowed - set(d) - set(optional))
    if missing:
        raise BundleError(f"{where}: missing field '{missing[0]}'.")


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _str(value: Any, where: str) -> str:
    return _expect(value, str, where)


def _bool(value: Any, where: str) -> bool:
    return _expect(value, bool, where)


def _int(value: Any, where: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"{where} must be a whole number, not {_type(value)}.")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise BundleError(f"{where} = {value} is out of range.")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BundleError(f"{where} must be a number, not {_type(value)}.")
    return float(value)


def _scalar(value: Any, where: str) -> Any:
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise BundleError(f"{where} must be a string, number, true/false or null, not {_type(value)}.")
    return value


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise BundleError(f"{where} must be one of {', '.join(choices)}, not {_show(value)}.")
    return value


def _optional(value: Any, check):
    return None if value is None else check(value)


def _ints(value: Any, where: str, lo: int | None = None, length: int | None = None) -> list[int]:
    items = _list(value, where)
    if length is not None and len(items) != length:
        raise BundleError(f"{where}: {len(items)} values for {length} steps.")
    return [_int(v, f"{where}[{i}]", lo=lo) for i, v in enumerate(items)]


def _array(value: Any, shape: tuple[int, ...] | None, kind: str, where: str, ndim: int | None = None) -> np.ndarray:
    """A nested list of the given shape (or number of dimensions) as a numpy array.

    kind "int": whole numbers; "bool": true/false; "float": numbers or null (read as NaN)."""
    _list(value, where)
    try:
        arr = np.array(value, dtype=object)
    except ValueError:  # ragged nesting numpy refuses to lay out
        raise BundleError(f"{where}: rows of different lengths.") from None
    want_ndim = len(shape) if shape is not None else ndim
    if arr.ndim < want_ndim and any(isinstance(v, list) for v in arr.ravel()):
        raise BundleError(f"{where}: rows of different lengths.")
    if arr.ndim != want_ndim or (shape is not None and arr.shape != shape):
        expected = "x".join(map(str, shape)) if shape is not None else f"{want_ndim} dimensions"
        got = "x".join(map(str, arr.shape))
        raise BundleError(f"{where}: shape {got} does not match the trace (expected {expected}).")
    flat = arr.ravel()
    if kind == "int":
        if not all(type(v) is int for v in flat):
            raise BundleError(f"{where}: every value must be a whole number.")
        return np.array(flat.tolist(), dtype=np.int64).reshape(arr.shape)
    if kind == "bool":
        if not all(type(v) is bool for v in flat):
            raise BundleError(f"{where}: every value must be true or false.")
        return np.array(flat.tolist(), dtype=bool).reshape(arr.shape)
    if not all(v is None or type(v) in (int, float) for v in flat):
        raise BundleError(f"{where}: every value must be a number or null.")
    return np.array([np.nan if v is None else v for v in flat], dtype=np.float32).reshape(arr.shape)


def _params(value: Any, where: str) -> dict:
    d = _object(value, where)
    for policy, values in d.items():
        for key, v in _object(values, f"{where}.{policy}").items():
            _scalar(v, f"{where}.{policy}.{key}")
    return d


def _layer_budgets(value: Any, n_layers: int, where: str) -> list[int | None]:
    items = _list(value, where)
    if len(items) != n_layers:
        raise BundleError(f"{where}: {len(items)} values for {n_layers} layers.")
    return [_optional(v, lambda x, i=i: _int(x, f"{where}[{i}]", lo=0)) for i, v in enumerate(items)]


def _numbers(value: Any, where: str, scalar) -> dict:
    """An object of numbers and lists of numbers (timings); ``scalar`` checks the single values."""
    out = {}
    for key, v in _object(value, where).items():
        if isinstance(v, list):
            out[key] = [_number(x, f"{where}.{key}[{i}]") for i, x in enumerate(v)]
        else:
            out[key] = scalar(v, f"{where}.{key}")
    return out


TIMING_TEXTS = {"decode_path", "graph_failure"}  # the only words among a trace's timings


def _timings(value: Any, where: str) -> dict:
    """prefill_s, decode_s, total_s (numbers), step_s (a list), and how the steps ran (short text)."""
    d = dict(_object(value, where))
    texts = {k: d.pop(k) for k in TIMING_TEXTS & set(d)}
    out = _numbers(d, where, _number)
    for key, v in texts.items():
        text = _str(v, f"{where}.{key}")
        if len(text) > 500:
            raise BundleError(f"{where}.{key} is longer than 500 characters.")
        out[key] = text
    return out


def _store_error(value: Any, n_layers: int, where: str) -> StoreError:
    d = _object(value, where)
    counts = {"full_precision_keys", "full_precision_values"}
    _keys(d, {"key", "value"} | counts, where, optional=counts)

    def per_layer(name):
        items = _list(d[name], f"{where}.{name}")
        if len(items) != n_layers:
            raise BundleError(f"{where}.{name}: {len(items)} values for {n_layers} layers.")
        return [_number(x, f"{where}.{name}[{i}]") for i, x in enumerate(items)]

    def count(name):
        return _optional(d.get(name), lambda v: _int(v, f"{where}.{name}", lo=0))

    return StoreError(per_layer("key"), per_layer("value"), count("full_precision_keys"), count("full_precision_values"))


def _protection(value: Any, where: str) -> Protection:
    d = _object(value, where)
    names = {"n_sink", "recent", "anchored_at_prompt"}
    _keys(d, names, where, optional=names)
    return Protection(
        n_sink=_int(d.get("n_sink", 0), f"{where}.n_sink", lo=0),
        recent=_int(d.get("recent", 0), f"{where}.recent", lo=0),
        anchored_at_prompt=_bool(d.get("anchored_at_prompt", False), f"{where}.anchored_at_prompt"),
    )


def _spec(value: Any, where: str) -> PolicySpec:
    from kvviz.policies import PolicyError

    try:
        return PolicySpec.from_dict(_object(value, where))
    except PolicyError as exc:
        raise BundleError(f"{where}: {_one_line(exc)}") from None
