"""Recent live runs on disk, so that a run reopens after the server restarts, and a run that a
restart cut short says so.

Each run has a random id (``new_run_id``) and a folder ``$KVVIZ_CACHE_DIR/runs/<id>/`` holding
``run.json`` (its request, its state and its wall times) and, once it ended, its traces as
``policy.npz``, ``full.npz`` and ``forced.npz``. A run is "running" from ``begin`` until
``finish``; one still "running" that no job of this process is running was interrupted.

The ids are unguessable (64 random bits): a page finds a run only through its own link
(``?run=<id>``), so two browser sessions never see each other's runs unless a link is shared.
The store keeps the ``MAX_RUNS`` newest runs and at most ``MAX_BYTES`` in all.

Also here: reading a trace file a person uploads (``read_trace_file``), refused above
``MAX_TRACE_FILE_BYTES``. Stored traces and uploads go through the same strict reader
(``kvviz.record.trace_reader``), with their policy specs checked by the policies. Nothing here
imports torch or streamlit.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kvviz.i18n import _
from kvviz.record import trace_reader
from kvviz.record.checks import TraceError
from kvviz.record.trace import Trace, _json_default
from kvviz.runs import bundle

MAX_RUNS = 24
MAX_BYTES = 256 << 20
MAX_TRACE_FILE_BYTES = trace_reader.MAX_FILE_BYTES  # the one upload limit: a larger trace file is refused
PHASE_FILES = ("policy", "full", "forced")
_ID = re.compile(r"^[0-9a-f]{16}$")
_lock = threading.Lock()
active: set[str] = set()  # runs a job of this process is running now


class TraceFileError(TraceError):
    """An uploaded trace file that cannot be read; one line that starts with the file's name."""


def runs_dir() -> Path:
    """``$KVVIZ_CACHE_DIR/runs`` (beside the weights cache)."""
    from kvviz.model.weight_files import weights_cache_dir  # here: that module imports torch

    return weights_cache_dir() / "runs"


def new_run_id() -> str:
    return secrets.token_hex(8)


def valid_id(run_id: str) -> bool:
    return bool(_ID.match(run_id or ""))


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=_json_default))
    os.replace(tmp, path)


def begin(run_id: str, request: dict) -> None:
    """Record that a run started (its request: spec text, prompt ids, settings)."""
    active.add(run_id)
    try:
        folder = runs_dir() / run_id
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / "run.json", {"state": "running", "request": request, "started": time.time()})
    except OSError:
        pass  # a read-only cache directory: runs just do not survive a restart


def finish(run_id: str, result, error: str | None, notice: str | None = None) -> None:
    """Record how a run ended: its traces (a ``live_run.LiveResult``), its error, or the notice of
    a stop that left no result."""
    active.discard(run_id)
    folder = runs_dir() / run_id
    try:
        meta = json.loads((folder / "run.json").read_text())
        traces = {} if result is None else {"policy": result.trace, "full": result.full, "forced": result.forced}
        for name, trace in traces.items():
            if trace is not None:
                trace.save(folder / f"{name}.npz")
        meta.update(
            state="error" if error else "stopped" if notice or (result is not None and result.stopped) else "done",
            error=error, notice=notice, ended=time.time(),
            wall_s=None if result is None else result.wall_s,
            stopped_in=None if result is None else result.stopped_in,
            generated_text="" if result is None else result.generated_text,
            full_text="" if result is None else result.full_text,
            # what the policy found (duo_attention's streaming heads): a Trace's extras are not saved
            policy_details={} if result is None else result.trace.extra.get("policy_details", {}),
        )
        _write_json(folder / "run.json", meta)
    except (OSError, ValueError):
        return
    prune()


@dataclass
class StoredRun:
    run_id: str
    state: str  # "running" (in this process), "interrupted", "done", "stopped", "error"
    meta: dict
    traces: dict  # phase -> Trace, for the phases that ended

    @property
    def interrupted(self) -> bool:
        return self.state == "interrupted"


def load(run_id: str) -> StoredRun | None:
    """The stored run, or None when the id is unknown (or not an id)."""
    if not valid_id(run_id):
        return None
    folder = runs_dir() / run_id
    try:
        meta = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None
    state = meta.get("state", "error")
    if state == "running" and run_id not in active:
        state = "interrupted"
    traces = {}
    for name in PHASE_FILES:
        path = folder / f"{name}.npz"
        if path.exists():
            try:
                traces[name] = read_trace(path, path.name, max_bytes=None)
            except (OSError, TraceError):
                continue  # a damaged file: the run reopens without this phase
    details = meta.get("policy_details")
    if "policy" in traces and isinstance(details, dict):  # the run's details, as the run showed them
        traces["policy"].extra["policy_details"] = {str(k): str(v) for k, v in details.items()}
    return StoredRun(run_id, state, meta, traces)


def prune(max_runs: int = MAX_RUNS, max_bytes: int = MAX_BYTES) -> None:
    """Drop the oldest runs beyond ``max_runs`` or ``max_bytes`` (never one that is running)."""
    with _lock:
        try:
            folders = [f for f in runs_dir().iterdir() if f.is_dir() and valid_id(f.name)]
        except OSError:
            return
        folders.sort(key=lambda f: f.stat().st_mtime, reverse=True)
        total = 0
        for i, folder in enumerate(folders):
            size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            total += size
            if folder.name not in active and (i >= max_runs or total > max_bytes):
                shutil.rmtree(folder, ignore_errors=True)


def read_trace(source: bytes | Path, name: str, max_bytes: int | None = MAX_TRACE_FILE_BYTES) -> Trace:
    """A trace file (``.json`` or ``.npz``), through the one strict reader, its policy spec checked
    by the policies; raises TraceError (one line). A run bundle handed in is sent to its page."""
    if name.lower().endswith(".npz"):
        return trace_reader.read_trace(source, name, check_spec=bundle.check_spec, max_bytes=max_bytes)
    data = source.read_bytes() if isinstance(source, Path) else source
    trace_reader.check_size(len(data), max_bytes)
    doc = trace_reader.parse_json(data)
    if isinstance(doc, dict) and doc.get("schema") == bundle.SCHEMA:
        raise TraceError(_("This is a run bundle from the {page} page: open it there.").format(page=bundle.page_of(doc.get("kind"))))
    return trace_reader.trace_from_dict(doc, check_spec=bundle.check_spec)


def read_trace_file(name: str, data: bytes) -> Trace:
    """A trace from an uploaded ``.json`` or ``.npz`` file (what the Download button gives), at most
    ``MAX_TRACE_FILE_BYTES``; raises TraceFileError with one line that starts with the file's name."""
    try:
        return read_trace(data, name)
    except TraceError as exc:
        raise TraceFileError(f"{name}: {exc}") from None
