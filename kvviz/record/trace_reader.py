"""The one strict reader of saved Traces. ``Trace.load``, the run store, the Live page's trace
upload and the traces of a run bundle all come through ``trace_from_dict``:

- every field's type, every array's shape against the others (``n_layers``, ``n_kv_heads``,
  positions = prompt + generated tokens, steps = generated tokens) and every step's range;
- unknown fields are refused, never silently dropped, at every level (an npz member too);
- problems raise ``TraceError`` with one line that names the field.

Files: strict JSON (no ``NaN``/``Infinity``; a missing number is ``null``) or ``.npz`` as
``Trace.save`` writes it. An npz is a zip of ``.npy`` arrays and compresses about 1000:1, so
each member's header (dtype and shape) and its unpacked size are checked against
``MAX_ARRAY_BYTES`` before any array is read, and nothing is unpickled. Uploads are refused
above ``MAX_FILE_BYTES``, the one upload limit of the app (run bundles too).
"""

from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kvviz.i18n import N_, _
from kvviz.record.checks import (
    TraceError, check_array, check_bool, check_choice, check_int, check_ints, check_keys, check_list,
    check_number, check_object, check_scalar, check_str, one_line, optional, show,
)
from kvviz.record.trace import ARRAY_FIELDS, Protection, StoreError, Trace

MAX_FILE_BYTES = 50 << 20  # an uploaded trace or run bundle; .streamlit/config.toml maxUploadSize says the same
MAX_ARRAY_BYTES = 4 * MAX_FILE_BYTES  # an npz's arrays unpacked, in all (about what a full JSON file costs to read)
MAX_NPY_HEADER = 10_000
MAX_TOKEN_ID = 2**31 - 1
MAX_BYTES_VALUE = 2**62
STOPPED_BY = ("eos", "max_new_tokens", "user")
OPTIONAL = {
    "kl_to_reference", "top1_agreement", "teacher_forced", "stopped_by", "store_error", "protection", "spec",
    "device_memory", "extra", "read_bytes", "summary_bytes", "read_mask", "recall",
}
ARRAY_NDIM = {"evicted_at_step": 3, "scores": 3, "lost_mass": 2, "topk_ids": 2, "topk_probs": 2, "read_mask": 4, "recall": 2}  # others 1

# Arrays a Trace may carry in ``extra``: name -> its shape from (steps, layers, kv_heads)
EXTRA_ARRAYS = {
    "score_cut": lambda steps, layers, kv: (steps, layers, kv),  # kvviz.compare.run: the lowest score kept on merit
}
# Single values a Trace may carry in ``extra``: name -> its check (kvviz.runtime.engine: how the cache was laid out)
EXTRA_SCALARS = {
    "fixed_capacity": lambda v, where: check_bool(v, where),  # held in buffers of fixed capacity after the prefill
    "kv_bytes_reserved": lambda v, where: check_int(v, where, lo=0, hi=MAX_BYTES_VALUE),  # what those buffers take
    "question_at": lambda v, where: check_int(v, where, lo=1, hi=10_000_000),  # the question's first token (context compressed before it)
    # what the selector found (Selector.run_details: duo_attention's streaming heads), plain text
    "policy_details": lambda v, where: {
        check_str(k, where, 200): check_str(t, f"{where}.{k}", 20_000) for k, t in check_object(v, where).items()
    },
}

SpecCheck = Callable[[dict, str], dict]  # a PolicySpec's dict checked by the policies (kvviz.runs.bundle.check_spec)


def trace_from_dict(d: Any, where: str = "trace", check_spec: SpecCheck | None = None) -> Trace:
    """A Trace from its saved form (JSON values, or numpy arrays for the array fields)."""
    d = check_object(d, where)
    if "prompt_ids" not in d and "evicted_at_step" not in d:
        raise TraceError(_("{where}: not a kvviz trace (it has neither prompt_ids nor evicted_at_step).").format(where=where))
    check_keys(d, set(Trace.__dataclass_fields__), where, optional=OPTIONAL)
    w = lambda name: f"{where}.{name}"  # noqa: E731
    n_layers = check_int(d["n_layers"], w("n_layers"), lo=1, hi=4096)
    n_kv = check_int(d["n_kv_heads"], w("n_kv_heads"), lo=1, hi=4096)
    prompt_ids = check_ints(d["prompt_ids"], w("prompt_ids"), lo=0, hi=MAX_TOKEN_ID)
    generated_ids = check_ints(d["generated_ids"], w("generated_ids"), lo=0, hi=MAX_TOKEN_ID)
    if not prompt_ids or not generated_ids:
        raise TraceError(_("{where}: a trace needs prompt tokens and at least one generated token.").format(where=where))
    n_pos, n_steps = len(prompt_ids) + len(generated_ids), len(generated_ids)
    tokens = check_list(d["tokens"], w("tokens"))
    if len(tokens) != n_pos:
        raise TraceError(_("{where}: {n} tokens for {positions} positions (prompt + generated).").format(
            where=w("tokens"), n=len(tokens), positions=n_pos))
    evicted = check_array(d["evicted_at_step"], (n_layers, n_kv, n_pos), "int", w("evicted_at_step"))
    if evicted.size and (evicted.min() < -1 or evicted.max() >= n_steps):
        raise TraceError(_("{where}: steps must be -1 (never) or between 0 and {last}.").format(where=w("evicted_at_step"), last=n_steps - 1))
    topk_ids = check_array(d["topk_ids"], None, "int", w("topk_ids"), ndim=2)
    if topk_ids.shape[0] != n_steps:
        raise TraceError(_("{where}: {rows} rows for {steps} steps.").format(where=w("topk_ids"), rows=topk_ids.shape[0], steps=n_steps))
    if topk_ids.size and (topk_ids.min() < 0 or topk_ids.max() > MAX_TOKEN_ID):
        raise TraceError(_("{where}: token ids must be between 0 and {most}.").format(where=w("topk_ids"), most=MAX_TOKEN_ID))
    k = topk_ids.shape[1]
    steps_ints = lambda name: check_ints(d[name], w(name), lo=0, hi=MAX_BYTES_VALUE, length=n_steps)  # noqa: E731
    per_step = lambda name, kind="float": check_array(d[name], (n_steps,), kind, w(name))  # noqa: E731
    return Trace(
        model=check_str(d["model"], w("model"), max_len=1000),
        device=check_str(d["device"], w("device"), max_len=1000),
        dtype=check_str(d["dtype"], w("dtype"), max_len=100),
        policy=check_str(d["policy"], w("policy"), max_len=1000),
        params=_params(d["params"], w("params")),
        prompt_ids=prompt_ids,
        generated_ids=generated_ids,
        tokens=[check_str(t, f"{w('tokens')}[{i}]") for i, t in enumerate(tokens)],
        n_layers=n_layers,
        n_kv_heads=n_kv,
        n_q_heads=check_int(d["n_q_heads"], w("n_q_heads"), lo=1, hi=4096),
        head_dim=check_int(d["head_dim"], w("head_dim"), lo=1, hi=65536),
        budget=optional(d["budget"], lambda v: check_int(v, w("budget"), lo=1, hi=MAX_TOKEN_ID)),
        layer_budgets=_layer_budgets(d["layer_budgets"], n_layers, w("layer_budgets")),
        evicted_at_step=evicted.astype(np.int32),
        scores=check_array(d["scores"], (n_layers, n_kv, n_pos), "float", w("scores")),
        kv_bytes=steps_ints("kv_bytes"),
        kv_bytes_full=steps_ints("kv_bytes_full"),
        bookkeeping_bytes=steps_ints("bookkeeping_bytes"),
        lost_mass=check_array(d["lost_mass"], (n_steps, n_layers), "float", w("lost_mass")),
        topk_ids=topk_ids,
        topk_probs=check_array(d["topk_probs"], (n_steps, k), "float", w("topk_probs")),
        entropy=per_step("entropy"),
        chosen_logprob=per_step("chosen_logprob"),
        timings=_timings(d["timings"], w("timings")),
        kl_to_reference=optional(d.get("kl_to_reference"), lambda v: per_step("kl_to_reference")),
        top1_agreement=optional(d.get("top1_agreement"), lambda v: per_step("top1_agreement", "bool")),
        teacher_forced=check_bool(d.get("teacher_forced", False), w("teacher_forced")),
        stopped_by=check_choice(d.get("stopped_by", "max_new_tokens"), STOPPED_BY, w("stopped_by")),
        store_error=optional(d.get("store_error"), lambda v: _store_error(v, n_layers, w("store_error"))),
        protection=_protection(d.get("protection", {}), w("protection")),
        spec=optional(d.get("spec"), lambda v: (check_spec or _spec)(v, w("spec"))),
        device_memory=_device_memory(d.get("device_memory", {}), w("device_memory")),
        extra=_extra(d.get("extra", {}), n_steps, n_layers, n_kv, w("extra")),
        read_bytes=optional(d.get("read_bytes"), lambda v: steps_ints("read_bytes")),
        summary_bytes=optional(d.get("summary_bytes"), lambda v: steps_ints("summary_bytes")),
        read_mask=optional(d.get("read_mask"), lambda v: check_array(v, (n_steps, n_layers, n_kv, n_pos), "bool", w("read_mask"))),
        recall=optional(d.get("recall"), lambda v: check_array(v, (n_steps, n_layers), "float", w("recall"))),
    )


# ---------------------------------------------------------------------------------------- files


def read_trace(data: bytes | Path, name: str, check_spec: SpecCheck | None = None, max_bytes: int | None = MAX_FILE_BYTES) -> Trace:
    """A trace from a saved file's bytes (or its path): ``.npz`` by its name, JSON otherwise."""
    check_size(data.stat().st_size if isinstance(data, Path) else len(data), max_bytes)
    if name.lower().endswith(".npz"):
        return trace_from_dict(read_npz(data), check_spec=check_spec)
    return trace_from_dict(parse_json(data.read_bytes() if isinstance(data, Path) else data), check_spec=check_spec)


OPENS = (N_("kvviz opens files"), N_("kvviz opens bundles"))  # check_size's ``what``, shown with _()


def check_size(size: int, max_bytes: int | None, what: str = OPENS[0]) -> None:
    if max_bytes is not None and size > max_bytes:
        raise TraceError(_("The file is {size} MiB; {what} of at most {most} MiB.").format(
            size=f"{size / 2**20:.1f}", what=_(what), most=max_bytes >> 20))


def parse_json(data: bytes | str) -> Any:
    """Strict JSON (RFC 8259): NaN and Infinity refused, UTF-8 only."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise TraceError(_("The file is not UTF-8 text, so not JSON.")) from None
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except TraceError:
        raise
    except (ValueError, RecursionError) as exc:
        raise TraceError(_("The file is not valid JSON ({error}).").format(error=one_line(exc))) from None


def _reject_constant(name: str):
    raise TraceError(_("The file holds {name}, which strict JSON does not allow (write null for a missing number).").format(name=name))


def read_npz(data: bytes | Path, where: str = "trace") -> dict:
    """The fields of an npz trace: its JSON ``meta`` and its arrays. Every member's header is read
    and checked (known name, no objects, ndim, unpacked size) before any array is."""
    try:
        with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as zf:
            members = _npz_members(zf, where)
            meta = parse_json(str(_read_member(zf, members.pop("meta"), where)))
            meta = check_object(meta, f"{where} (its meta)")
            for name, info in members.items():
                if name in meta:
                    raise TraceError(_("{where} is given twice (in meta and as an array).").format(where=f"{where}.{name}"))
                meta[name] = _read_member(zf, info, where)
            return meta
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise TraceError(_("The file is not a readable .npz archive ({error}).").format(error=one_line(exc))) from None


def _npz_members(zf: zipfile.ZipFile, where: str) -> dict[str, zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > len(ARRAY_FIELDS) + 1:
        raise TraceError(_("The .npz file holds {n} members; a trace has at most {most}.").format(n=len(infos), most=len(ARRAY_FIELDS) + 1))
    members, total = {}, 0
    for info in infos:
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if name not in ARRAY_FIELDS and name != "meta":
            raise TraceError(_("{where}: unknown field {name} in the .npz file.").format(where=where, name=show(info.filename)))
        if name in members:
            raise TraceError(_("{where} is in the .npz file twice.").format(where=f"{where}.{name}"))
        with zf.open(info) as f:
            shape, dtype, offset = _npy_header(f, f"{where}.{name}")
        nbytes = math.prod(shape) * dtype.itemsize
        if name == "meta" and (shape != () or dtype.kind != "U"):
            raise TraceError(_("{where}: the .npz file's meta must be one string (JSON), not {dtype} {shape}.").format(
                where=where, dtype=dtype, shape=shape))
        if name != "meta" and dtype.kind not in "biuf":
            raise TraceError(_("{where}: {dtype} values; a trace's arrays hold numbers or true/false.").format(where=f"{where}.{name}", dtype=dtype))
        if name != "meta" and len(shape) != ARRAY_NDIM.get(name, 1):
            raise TraceError(_("{where}: {n} dimensions, expected {expected}.").format(
                where=f"{where}.{name}", n=len(shape), expected=ARRAY_NDIM.get(name, 1)))
        if nbytes + offset != info.file_size:
            raise TraceError(_("{where}: its header declares {declared} of data, the file holds {held}.").format(
                where=f"{where}.{name}", declared=_size(nbytes), held=_size(info.file_size - offset)))
        total += nbytes
        if total > MAX_ARRAY_BYTES:
            raise TraceError(_("The .npz file unpacks to more than {most} MiB of arrays ({where} alone {size}); kvviz reads at most that.").format(
                most=MAX_ARRAY_BYTES >> 20, where=f"{where}.{name}", size=_size(nbytes)))
        members[name] = info
    if "meta" not in members:
        raise TraceError(_("The .npz file has no meta: it is not a trace saved by kvviz."))
    return members


def _npy_header(f, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes before the data) of one .npy member, from its header only."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _order, dtype = fmt.read_array_header_1_0(f, max_header_size=MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, _order, dtype = fmt.read_array_header_2_0(f, max_header_size=MAX_NPY_HEADER)
        else:
            raise TraceError(_("{where}: .npy format {version} is not one kvviz reads.").format(where=where, version=version))
    except (ValueError, TypeError, SyntaxError) as exc:
        if isinstance(exc, TraceError):
            raise
        raise TraceError(_("{where}: not a readable .npy array ({error}).").format(where=where, error=one_line(exc))) from None
    if dtype.hasobject:
        raise TraceError(_("{where} holds Python objects; kvviz never reads pickled data.").format(where=where))
    return shape, dtype, f.tell()


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    with zf.open(info) as f:
        try:
            return np.lib.format.read_array(f, allow_pickle=False, max_header_size=MAX_NPY_HEADER)
        except ValueError as exc:
            raise TraceError(_("{where}: {name} cannot be read ({error}).").format(where=where, name=info.filename, error=one_line(exc))) from None


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else _("{n} bytes").format(n=nbytes)


# ---------------------------------------------------------------------------------------- fields


def _params(value: Any, where: str) -> dict:
    d = check_object(value, where)
    for policy, values in d.items():
        for key, v in check_object(values, f"{where}.{policy}").items():
            check_scalar(v, f"{where}.{policy}.{key}")
    return d


def _spec(value: Any, where: str) -> dict:
    """A PolicySpec's dict, its form only (the policies check its names and values: check_spec)."""
    d = check_object(value, where)
    check_keys(d, {"policy", "params", "budget", "ratio"}, where, optional={"params", "budget", "ratio"})
    check_str(d["policy"], f"{where}.policy", max_len=200)
    _params(d.get("params", {}), f"{where}.params")
    optional(d.get("budget"), lambda v: check_int(v, f"{where}.budget", lo=1, hi=MAX_TOKEN_ID))
    optional(d.get("ratio"), lambda v: check_number(v, f"{where}.ratio"))
    return d


def _layer_budgets(value: Any, n_layers: int, where: str) -> list[int | None]:
    items = check_list(value, where)
    if len(items) != n_layers:
        raise TraceError(_("{where}: {n} values for {layers} layers.").format(where=where, n=len(items), layers=n_layers))
    return [optional(v, lambda x, i=i: check_int(x, f"{where}[{i}]", lo=0, hi=MAX_TOKEN_ID)) for i, v in enumerate(items)]


TIMING_TEXTS = {"decode_path", "graph_failure", "fused", "fused_steps"}  # the only words among a trace's timings


def _timings(value: Any, where: str) -> dict:
    """prefill_s, decode_s, total_s (numbers), step_s (a list), and how the steps ran (short text)."""
    out = {}
    for key, v in check_object(value, where).items():
        if key in TIMING_TEXTS:
            out[key] = check_str(v, f"{where}.{key}", max_len=500)
        elif isinstance(v, list):
            out[key] = [check_number(x, f"{where}.{key}[{i}]") for i, x in enumerate(v)]
        else:
            out[key] = check_number(v, f"{where}.{key}")
    return out


def _store_error(value: Any, n_layers: int, where: str) -> StoreError:
    d = check_object(value, where)
    counts = {"full_precision_keys", "full_precision_values"}
    check_keys(d, {"key", "value"} | counts, where, optional=counts)

    def per_layer(name):
        items = check_list(d[name], f"{where}.{name}")
        if len(items) != n_layers:
            raise TraceError(_("{where}: {n} values for {layers} layers.").format(where=f"{where}.{name}", n=len(items), layers=n_layers))
        return [check_number(x, f"{where}.{name}[{i}]") for i, x in enumerate(items)]

    def count(name):
        return optional(d.get(name), lambda v: check_int(v, f"{where}.{name}", lo=0, hi=MAX_TOKEN_ID))

    return StoreError(per_layer("key"), per_layer("value"), count("full_precision_keys"), count("full_precision_values"))


def _protection(value: Any, where: str) -> Protection:
    d = check_object(value, where)
    names = {"n_sink", "recent", "anchored_at_prompt"}
    check_keys(d, names, where, optional=names)
    return Protection(
        n_sink=check_int(d.get("n_sink", 0), f"{where}.n_sink", lo=0, hi=MAX_TOKEN_ID),
        recent=check_int(d.get("recent", 0), f"{where}.recent", lo=0, hi=MAX_TOKEN_ID),
        anchored_at_prompt=check_bool(d.get("anchored_at_prompt", False), f"{where}.anchored_at_prompt"),
    )


def _device_memory(value: Any, where: str) -> dict:
    """Per device of a split model: {"layers": [...], "weights_bytes", "kv_bytes"[, "allocated_bytes"]}."""
    d = check_object(value, where)
    if len(d) > 64:
        raise TraceError(_("{where}: {n} devices; a trace has at most 64.").format(where=where, n=len(d)))
    out = {}
    for device, row in d.items():
        at = f"{where}.{check_str(device, where, max_len=100)}"
        row = check_object(row, at)
        check_keys(row, {"layers", "weights_bytes", "kv_bytes", "allocated_bytes"}, at, optional={"allocated_bytes"})
        out[device] = {"layers": check_ints(row["layers"], f"{at}.layers", lo=0, hi=4096)} | {
            k: check_int(v, f"{at}.{k}", lo=0, hi=MAX_BYTES_VALUE) for k, v in row.items() if k != "layers"
        }
    return out


def _extra(value: Any, n_steps: int, n_layers: int, n_kv: int, where: str) -> dict:
    d = check_object(value, where)
    known = set(EXTRA_ARRAYS) | set(EXTRA_SCALARS)
    check_keys(d, known, where, optional=known)
    return {
        name: EXTRA_SCALARS[name](v, f"{where}.{name}") if name in EXTRA_SCALARS
        else check_array(v, EXTRA_ARRAYS[name](n_steps, n_layers, n_kv), "float", f"{where}.{name}")
        for name, v in d.items()
    }
