"""One background job: a run on a thread that a page polls (the Live run, a comparison, a sweep).

The base owns the thread, Stop, ``running`` / ``wait``, the progress a page shows
(``progress() -> (fraction, line)``) and what a failure becomes: a one-line ``error`` a person
reads, the app never crashing. A subclass implements ``work()``, says how far it is in
``running_progress()``, and may build its result in ``finish()`` from what is left after a stop
or an error.
"""

from __future__ import annotations

import logging
import threading

import torch

from kvviz.model.loading import out_of_memory_message
from kvviz.policies import PolicyError
from kvviz.record.text import PromptError

log = logging.getLogger(__name__)
MAX_MESSAGE = 300  # characters of an unexpected error's message shown to a person


class Stopped(Exception):
    """Stop came where a run cannot end with what it has (between the decoder layers of a prefill,
    or between the runs of a sweep): the run yields nothing, and the job says where it stopped."""


def error_message(exc: BaseException) -> str:
    """The one line a person reads for what ended a run: out of memory (the allocator's cache
    freed, so that a smaller run can start), input the run could not use, or anything else."""
    if isinstance(exc, torch.OutOfMemoryError):
        return out_of_memory_message(exc)
    if isinstance(exc, (PolicyError, PromptError, ValueError)):
        return str(exc)
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"[:MAX_MESSAGE]


class BackgroundJob:
    """``start()`` runs ``work()`` on a daemon thread named ``thread_name``, then ``finish()``.
    ``stop()`` asks it to end at its next token, or at the next decoder layer of a prefill (the
    work passes ``should_stop`` on). Safe to poll from another thread.

    After the run: ``error`` (one line) when it failed, ``notice`` when a stop left nothing to
    show, ``stop_raised`` when the work ended by raising ``Stopped``; ``result`` is the
    subclass's."""

    thread_name = "kvviz-job"

    def __init__(self):
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._thread: threading.Thread | None = None
        self.result = None
        self.error: str | None = None
        self.notice: str | None = None
        self.stop_raised = False

    # ------------------------------------------------------------------ what a subclass writes

    def work(self) -> None:
        """The run itself, on the job's thread; it sets ``result`` (or what ``finish`` needs)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Called on the job's thread after ``work``, however it ended."""

    def running_progress(self) -> tuple[float, str]:
        """(fraction done, a line saying what runs now), while the job runs."""
        return 0.0, "Starting"

    # ------------------------------------------------------------------ the base

    def start(self):
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for step in (self.work, self.finish):
                try:
                    step()
                except Stopped:
                    self.stop_raised = True
                except Exception as exc:  # noqa: BLE001  (shown in the page; the app keeps working)
                    if not isinstance(exc, ValueError):
                        log.exception("%s failed", self.thread_name)
                    self.error = self.error or error_message(exc)
        finally:
            self._ended.set()

    def should_stop(self) -> bool:
        """What the work passes to the engine as ``should_stop``."""
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        """True until the run has ended (also before ``start``)."""
        return not self._ended.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run to end, at most ``timeout`` seconds; whether it has ended."""
        if self._thread is None:
            return not self.running
        return self._ended.wait(timeout)

    def progress(self) -> tuple[float, str]:
        """(fraction done, a line a person reads): what runs now, or how the run ended."""
        if not self.running:
            return 1.0, "Failed" if self.error else "Stopped" if self.stopped or self.stop_raised else "Done"
        return self.running_progress()
