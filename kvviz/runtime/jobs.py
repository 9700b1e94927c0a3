"""One background job: a run on a thread that a page polls (the Live run, a comparison, a sweep).

The base owns the thread, Stop, ``running`` / ``wait``, the progress a page shows
(``progress() -> (fraction, line)``) and what a failure becomes: a one-line ``error`` a person
reads, the app never crashing. A subclass implements ``work()``, says how far it is in
``running_progress()``, and may build its result in ``finish()`` from what is left after a stop
or an error.

Visitors' runs wait their turn in a ``RunQueue`` (the server's is ``process_queue()``): at most
``slots`` jobs run at once, the others wait in the order they were started (first in, first out),
and a waiting job says where it stands ("2 runs ahead of yours"). Stop leaves the queue; a job
whose owner is gone (``owner_alive`` returns False, e.g. the browser tab was closed) for
``abandon_after_s`` seconds leaves it too, or stops if it runs. A job without a queue runs at once
(the CLI, tests). Model work a page does in its own script thread (the Attention explorer's
maps, a paged run, the Quantization lab) takes a slot too, through ``queue_slot``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol

import torch

from kvviz.i18n import _
from kvviz.model.loading import out_of_memory_message
from kvviz.policies import PolicyError
from kvviz.record.text import PromptError

log = logging.getLogger(__name__)
MAX_MESSAGE = 300  # characters of an unexpected error's message shown to a person


LEFT_QUEUE = "Stopped while waiting in the queue: nothing ran."
ABANDONED = "The page that started this run went away, so it left the queue (or stopped)."


class QueueFull(ValueError):
    """The queue holds as many waiting runs as it may; the message is one line for a person."""


class Waiter(Protocol):
    """What waits in a RunQueue: a BackgroundJob, or a Ticket for work in the caller's thread."""

    @property
    def stopped(self) -> bool: ...

    def owner_gone(self, grace_s: float) -> bool: ...


class RunQueue:
    """At most ``slots`` jobs run at once; the others wait, first in, first out.

    ``join(job)`` puts a job at the end of the line (in the starting thread, so that the order is
    the order of the calls) or raises QueueFull; ``wait_turn(job)`` blocks the job's thread until
    it is first in line and a slot is free (True), or until it was stopped or abandoned while
    waiting (False, and it has left the line); ``leave(job)`` frees its slot. Thread-safe."""

    def __init__(self, slots: int = 1, max_waiting: int = 64, abandon_after_s: float = 20.0):
        self._cond = threading.Condition()
        self._running: list = []
        self._waiting: deque = deque()
        self.configure(slots, max_waiting, abandon_after_s)

    def configure(self, slots: int, max_waiting: int, abandon_after_s: float) -> None:
        with self._cond:
            self.slots, self.max_waiting, self.abandon_after_s = max(int(slots), 1), max(int(max_waiting), 0), float(abandon_after_s)
            self._cond.notify_all()  # more slots may admit someone now

    def join(self, job: Waiter) -> None:
        with self._cond:
            if len(self._waiting) >= self.max_waiting and len(self._running) >= self.slots:
                raise QueueFull(_(
                    "The server is busy: {running} runs are running and {waiting} are waiting, "
                    "as many as it queues (KVVIZ_MAX_QUEUED_RUNS). Try again in a minute."
                ).format(running=len(self._running), waiting=len(self._waiting)))
            self._waiting.append(job)

    def wait_turn(self, job: Waiter) -> bool:
        with self._cond:
            while True:
                if job.stopped or job.owner_gone(self.abandon_after_s):
                    self._remove(job)
                    return False
                if self._waiting and self._waiting[0] is job and len(self._running) < self.slots:
                    self._waiting.popleft()
                    self._running.append(job)
                    self._cond.notify_all()  # the next in line may fit a free slot too
                    return True
                self._cond.wait(timeout=0.25)  # also wakes to check the owner and Stop

    def leave(self, job: Waiter) -> None:
        with self._cond:
            self._remove(job)

    def wake(self) -> None:
        """A job was stopped: let waiting jobs look again now."""
        with self._cond:
            self._cond.notify_all()

    def _remove(self, job: Waiter) -> None:
        if job in self._running:
            self._running.remove(job)
        if job in self._waiting:
            self._waiting.remove(job)
        self._cond.notify_all()

    def ahead_of(self, job: Waiter) -> int | None:
        """How many runs go before ``job``: those running and those ahead of it in line; None when
        it no longer waits."""
        with self._cond:
            if job not in self._waiting:
                return None
            return len(self._running) + self._waiting.index(job)

    def counts(self) -> tuple[int, int]:
        """(running, waiting)."""
        with self._cond:
            return len(self._running), len(self._waiting)


_PROCESS_QUEUE = RunQueue()


def process_queue(slots: int | None = None, max_waiting: int | None = None, abandon_after_s: float | None = None) -> RunQueue:
    """The queue every visitor's run of this process waits in; the arguments given change it
    (the operator's settings, read when a run starts)."""
    q = _PROCESS_QUEUE
    if slots is not None or max_waiting is not None or abandon_after_s is not None:
        q.configure(
            q.slots if slots is None else slots, q.max_waiting if max_waiting is None else max_waiting,
            q.abandon_after_s if abandon_after_s is None else abandon_after_s,
        )
    return q


class Ticket:
    """A place in a RunQueue for work run in the caller's own thread (not a BackgroundJob): it is
    never stopped nor abandoned while it waits; the caller's thread ends the wait."""

    stopped = False

    def owner_gone(self, grace_s: float) -> bool:
        return False


@contextmanager
def queue_slot(queue: RunQueue | None) -> Iterator[None]:
    """Hold a slot of ``queue`` around synchronous model work: join the end of the line
    (QueueFull when it is full), wait for the turn in this thread, leave when the work ends,
    however it ends. ``None``: no queue, the work runs at once."""
    if queue is None:
        yield
        return
    ticket = Ticket()
    queue.join(ticket)
    try:
        queue.wait_turn(ticket)
        yield
    finally:
        queue.leave(ticket)  # type: ignore[arg-type]


def waiting_line(ahead: int) -> str:
    """Where a run stands in the queue (in the session's language: pages read it in their script run)."""
    if not ahead:
        return _("Waiting in the queue: yours is next")
    if ahead == 1:
        return _("Waiting in the queue: 1 run ahead of yours")
    return _("Waiting in the queue: {n} runs ahead of yours").format(n=ahead)


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
    subclass's.

    With a ``queue`` (set before ``start``), ``start`` joins it (QueueFull when it is full) and
    the work begins when the queue admits it; ``waited_s`` says how long that took."""

    thread_name = "kvviz-job"

    def __init__(self):
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._thread: threading.Thread | None = None
        self.result = None
        self.error: str | None = None
        self.notice: str | None = None
        self.stop_raised = False
        self.queue: RunQueue | None = None
        self.owner_alive: Callable[[], bool] | None = None  # whether whoever follows the job is still there
        self.abandoned = False
        self.waited_s: float | None = None  # seconds in the queue, once admitted
        self._gone_since: float | None = None
        self._owner_checked = 0.0
        self._queued_at = 0.0

    # ------------------------------------------------------------------ what a subclass writes

    def work(self) -> None:
        """The run itself, on the job's thread; it sets ``result`` (or what ``finish`` needs)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Called on the job's thread after ``work``, however it ended."""

    def running_progress(self) -> tuple[float, str]:
        """(fraction done, a line saying what runs now), while the job runs."""
        return 0.0, "Starting"

    def size(self) -> tuple[int, int, int] | None:
        """(longest prompt in tokens, most new or forced tokens of one run, runs): what the
        operator's caps are checked against before a visitor's job starts; None: not sized."""
        return None

    def on_start(self) -> None:
        """Called by ``start`` once the job has its place in the queue, before its thread starts."""

    # ------------------------------------------------------------------ the base

    def start(self):
        if self.queue is not None:
            self.queue.join(self)  # QueueFull: the job never starts
        self._queued_at = time.monotonic()
        self.on_start()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        queue = self.queue
        admitted = queue is None
        try:
            if queue is not None:
                admitted = queue.wait_turn(self)
                if admitted:
                    self.waited_s = time.monotonic() - self._queued_at
                else:
                    self.notice = ABANDONED if self.abandoned else LEFT_QUEUE
            for step in (self.work, self.finish) if admitted else (self.finish,):
                try:
                    step()
                except Stopped:
                    self.stop_raised = True
                except Exception as exc:  # noqa: BLE001  (shown in the page; the app keeps working)
                    if not isinstance(exc, ValueError):
                        log.exception("%s failed", self.thread_name)
                    self.error = self.error or error_message(exc)
        finally:
            if admitted and self.queue is not None:
                self.queue.leave(self)
            self._ended.set()

    def should_stop(self) -> bool:
        """What the work passes to the engine as ``should_stop``: Stop was pressed, or the job's
        owner is gone."""
        if self.queue is not None and not self._stop.is_set():
            self.owner_gone(self.queue.abandon_after_s)
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self.queue is not None:
            self.queue.wake()

    def owner_gone(self, grace_s: float) -> bool:
        """Whether ``owner_alive`` has said False for more than ``grace_s`` seconds (asked at most
        every 0.2 s); a job abandoned so is stopped."""
        if self.owner_alive is None:
            return False
        now = time.monotonic()
        if now - self._owner_checked >= 0.2:
            self._owner_checked = now
            if self.owner_alive():
                self._gone_since = None
            elif self._gone_since is None:
                self._gone_since = now
        if self._gone_since is not None and now - self._gone_since > grace_s:
            self.abandoned = True
            self._stop.set()
        return self.abandoned

    @property
    def waiting(self) -> bool:
        """Whether the job waits in its queue."""
        return self.queue is not None and self.running and self.queue.ahead_of(self) is not None

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
            return 1.0, _("Failed") if self.error else _("Stopped") if self.stopped or self.stop_raised else _("Done")
        ahead = self.queue.ahead_of(self) if self.queue is not None else None
        if ahead is not None:
            return 0.0, waiting_line(ahead)
        return self.running_progress()
