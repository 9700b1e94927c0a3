"""Checks for values read from files a person hands kvviz (a saved trace, a run bundle): each one
returns the value it checked or raises ``TraceError`` with one line that names the field.

``where`` is the field's path as the message shows it ("trace.scores", "settings.policies[1]").
JSON values arrive as Python values; arrays of an ``.npz`` file arrive as numpy arrays, whose
dtype and shape are checked as strictly as a nested list's values.
"""

from __future__ import annotations

import json
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np

from kvviz.i18n import N_, _


class TraceError(ValueError):
    """A trace (or a file holding traces) that cannot be read; one line, fit to show a person."""


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160]


def show(value: Any) -> str:
    """A short, printable form of a value read from a file (for messages)."""
    try:
        text = json.dumps(value) if not isinstance(value, str) else repr(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def type_name(value: Any) -> str:
    """What a value read from a file is, in words (in the session's language)."""
    name = {dict: N_("an object"), list: N_("a list"), str: N_("a string"), bool: N_("true/false"), type(None): N_("null")}.get(
        type(value), N_("a number") if isinstance(value, (int, float)) else None
    )
    return type(value).__name__ if name is None else _(name)


EXPECTED = {dict: N_("a JSON object"), list: N_("a list"), str: N_("a string"), bool: N_("true or false")}


def expect(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise TraceError(_("{where} must be {expected}, not {got}.").format(where=where, expected=_(EXPECTED[kind]), got=type_name(value)))
    return value


def check_object(value: Any, where: str) -> dict:
    return expect(value, dict, where)


def check_list(value: Any, where: str) -> list:
    return expect(value, list, where)


def check_str(value: Any, where: str, max_len: int | None = None) -> str:
    expect(value, str, where)
    if max_len is not None and len(value) > max_len:
        raise TraceError(_("{where} is longer than {most} characters.").format(where=where, most=max_len))
    return value


def check_bool(value: Any, where: str) -> bool:
    return expect(value, bool, where)


def check_keys(d: dict, allowed: AbstractSet[str], where: str, optional: AbstractSet[str] = frozenset()) -> None:
    """Unknown fields are refused (never silently dropped); required ones must be there."""
    unknown = sorted(str(k) for k in set(d) - allowed)
    if unknown:
        raise TraceError(_("{where}: unknown field {field}.").format(where=where, field=show(unknown[0])))
    missing = sorted(allowed - set(d) - set(optional))
    if missing:
        raise TraceError(_("{where}: missing field '{field}'.").format(where=where, field=missing[0]))


def check_int(value: Any, where: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TraceError(_("{where} must be a whole number, not {got}.").format(where=where, got=type_name(value)))
    value = int(value)
    if lo is not None and value < lo or hi is not None and value > hi:
        raise TraceError(_("{where} = {value} is out of range.").format(where=where, value=show(value)))
    return value


def check_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TraceError(_("{where} must be a number, not {got}.").format(where=where, got=type_name(value)))
    try:
        return float(value)
    except OverflowError:
        raise TraceError(_("{where} is too large a number.").format(where=where)) from None


def check_scalar(value: Any, where: str) -> Any:
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise TraceError(_("{where} must be a string, number, true/false or null, not {got}.").format(where=where, got=type_name(value)))
    return value


def check_choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise TraceError(_("{where} must be one of {choices}, not {value}.").format(where=where, choices=", ".join(choices), value=show(value)))
    return value


def optional(value: Any, check):
    return None if value is None else check(value)


def check_ints(value: Any, where: str, lo: int | None = None, hi: int | None = None, length: int | None = None, per: str = "steps") -> list[int]:
    items = check_list(value, where)
    if length is not None and len(items) != length:
        message = _("{where}: {n} values for {length} steps.") if per == "steps" else _("{where}: {n} values for {length} {per}.")
        raise TraceError(message.format(where=where, n=len(items), length=length, per=per))
    return [check_int(v, f"{where}[{i}]", lo=lo, hi=hi) for i, v in enumerate(items)]


# dtype kinds an .npz array may hold for each kind of array (never objects)
NUMPY_KINDS = {"int": "iu", "bool": "b", "float": "fiu"}
TYPES = {"int": np.int64, "bool": bool, "float": np.float32}
INT_RANGE = (-(2**62), 2**62)


def check_array(value: Any, shape: tuple[int, ...] | None, kind: str, where: str, ndim: int | None = None) -> np.ndarray:
    """A nested list (JSON) or a numpy array (npz) of the given shape (or number of dimensions).

    kind "int": whole numbers (int64); "bool": true/false; "float": numbers or null, read as
    float32 (null is NaN)."""
    want_ndim = len(shape) if shape is not None else ndim
    if want_ndim is None:
        raise TypeError("check_array needs a shape or ndim")  # a caller's mistake, not the file's
    arr = value if isinstance(value, np.ndarray) else _from_list(value, want_ndim, where)
    if arr.ndim != want_ndim or (shape is not None and arr.shape != shape):
        expected = "x".join(map(str, shape)) if shape is not None else _("{n} dimensions").format(n=want_ndim)
        raise TraceError(_("{where}: shape {shape} does not match the trace (expected {expected}).").format(
            where=where, shape="x".join(map(str, arr.shape)) or _("scalar"), expected=expected))
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject or value.dtype.kind not in NUMPY_KINDS[kind] or (value.dtype.kind == "u" and value.dtype.itemsize > 4):
            raise TraceError(_("{where}: {dtype} values, not {kind}.").format(where=where, dtype=value.dtype, kind=_describe(kind)))
        with np.errstate(over="ignore"):
            return value.astype(TYPES[kind])
    flat = arr.ravel().tolist()
    if kind == "int":
        if not all(type(v) is int and INT_RANGE[0] <= v <= INT_RANGE[1] for v in flat):
            raise TraceError(_("{where}: every value must be a whole number (of at most 62 bits).").format(where=where))
    elif kind == "bool":
        if not all(type(v) is bool for v in flat):
            raise TraceError(_("{where}: every value must be true or false.").format(where=where))
    else:
        if not all(v is None or type(v) is float or (type(v) is int and abs(v) < 2**127) for v in flat):
            raise TraceError(_("{where}: every value must be a number or null.").format(where=where))
        flat = [np.nan if v is None else v for v in flat]
    with np.errstate(over="ignore"):  # a float beyond float32 is read as infinity, as numpy does
        return np.array(flat, dtype=TYPES[kind]).reshape(arr.shape)


def _from_list(value: Any, ndim: int, where: str) -> np.ndarray:
    check_list(value, where)
    if ndim > 1 and not all(isinstance(row, list) for row in value):
        raise TraceError(_("{where}: expected {ndim} dimensions of nested lists.").format(where=where, ndim=ndim))
    try:
        arr = np.array(value, dtype=object)
    except (ValueError, RecursionError):  # ragged nesting numpy refuses to lay out, or too deep
        raise TraceError(_("{where}: rows of different lengths.").format(where=where)) from None
    if arr.ndim > ndim or (arr.ndim < ndim and any(isinstance(v, list) for v in arr.ravel())):
        raise TraceError(_("{where}: rows of different lengths, or more dimensions than {ndim}.").format(where=where, ndim=ndim))
    if arr.ndim == ndim and ndim > 0 and any(isinstance(v, (list, dict)) for v in arr.ravel()):
        raise TraceError(_("{where}: rows of different lengths.").format(where=where))
    return arr


def _describe(kind: str) -> str:
    names = {"int": N_("whole numbers"), "bool": N_("true/false values"), "float": N_("numbers")}
    return _(names[kind])
