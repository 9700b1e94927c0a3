"""How a page follows a background job (``kvviz.runtime.jobs.BackgroundJob``: the Live run, a
comparison, a sweep): Run and Stop, a progress bar while the job runs, then how it ended (its
error, or the notice of a stop that left nothing to show).

Every job a page starts is checked against the operator's caps (``kvviz.runtime.settings``) and
waits its turn in the process's run queue (``kvviz.runtime.jobs.process_queue``); while it waits,
its progress line says how many runs are ahead of it. The job knows whether its browser session
is still connected: a closed tab frees its place.

A page keeps one ``JobView(prefix)``; its session_state keys are ``<prefix>.job``,
``.error``, ``.notice`` and ``.run_requested``, its buttons' keys ``<prefix>.run`` and ``.stop``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import streamlit as st
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from kvviz.i18n import _
from kvviz.runtime.inputs import InputError, check_limits
from kvviz.runtime.jobs import BackgroundJob, QueueFull, RunQueue, process_queue, queue_slot, waiting_line
from kvviz.ui.sidebar import operator_settings
from kvviz.ui.token_html import md_escape

POLL_S = 0.25
KEEPALIVE_S = 1.0  # the progress bar is redrawn at least this often: a closed tab's script then stops


class JobView:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.job_key, self.error_key, self.notice_key = f"{prefix}.job", f"{prefix}.error", f"{prefix}.notice"
        self.requested_key = f"{prefix}.run_requested"

    @property
    def job(self) -> BackgroundJob | None:
        """The job this session follows, running or just ended; None when there is none."""
        return st.session_state.get(self.job_key)

    def run_requested(self) -> bool:
        """Whether Run was pressed (asked once per press)."""
        return bool(st.session_state.pop(self.requested_key, False))

    def start(self, job: BackgroundJob) -> BackgroundJob | None:
        """Start ``job`` in the server's run queue and follow it; the last job's messages go.
        A job larger than the operator's caps, or one the full queue cannot take, is refused with
        one message on the page (None)."""
        ss = st.session_state
        settings = operator_settings()
        try:
            size = job.size()
            if size is not None:
                prompt_tokens, new_tokens, runs = size
                check_limits(settings.limits, prompt_tokens=prompt_tokens, new_tokens=new_tokens, runs=runs)
            job.queue = process_queue(settings.max_concurrent_runs, settings.max_queued_runs, settings.abandon_after_s)
            job.owner_alive = _session_alive()
            ss[self.job_key] = job.start()
        except (InputError, QueueFull) as exc:
            st.error(md_escape(str(exc)), icon=":material/block:")
            return None
        ss[self.error_key] = ss[self.notice_key] = None
        return job

    def buttons(self, run_column, stop_column) -> None:
        """▶ Run (off while a job is on) and ■ Stop (on only then)."""
        busy = self.job is not None
        run_column.button(_("▶ Run"), type="primary", on_click=self._request, disabled=busy, key=f"{self.prefix}.run", width="stretch")
        stop_column.button(_("■ Stop"), on_click=self._stop, disabled=not busy, key=f"{self.prefix}.stop", width="stretch")

    def _request(self) -> None:
        st.session_state[self.requested_key] = True

    def _stop(self) -> None:
        if self.job is not None:
            self.job.stop()

    def follow(self, box=None, draw: Callable[[BackgroundJob], None] | None = None) -> BackgroundJob | None:
        """While the job runs: its progress bar in ``box`` (the page when None), and ``draw(job)``
        each time the progress moved (what the job streams). Once it ended: keep its error and
        notice for ``messages``, forget it, and return it (None when there is no job): the page
        keeps its result and reruns."""
        job = self.job
        if job is None:
            return None
        bar = (box or st).progress(0.0)
        shown, drawn_at = None, 0.0
        while True:
            ended = not job.running
            now = job.progress()
            if now != shown:  # redraw only what changed: the run, not the page, should use the CPU
                bar.progress(now[0], text=now[1])
                if draw is not None:
                    draw(job)
                shown, drawn_at = now, time.monotonic()
            elif time.monotonic() - drawn_at > KEEPALIVE_S:  # a page that went away stops here (Streamlit's StopException)
                bar.progress(now[0], text=now[1])
                drawn_at = time.monotonic()
            if ended:
                break
            time.sleep(POLL_S)
        ss = st.session_state
        ss[self.error_key], ss[self.notice_key] = job.error, job.notice
        del ss[self.job_key]
        return job

    def messages(self, once: bool = False) -> None:
        """The last job's error (escaped: it can quote the prompt) and its notice (kvviz's own
        text); ``once``: shown on this run of the page only."""
        ss = st.session_state
        error, notice = ss.get(self.error_key), ss.get(self.notice_key)
        if once:
            ss[self.error_key] = ss[self.notice_key] = None
        if error:
            st.error(md_escape(error))
        if notice:
            st.warning(_(notice), icon=":material/stop_circle:")  # kvviz's own text, N_-marked where a job sets it


def _session_alive() -> Callable[[], bool]:
    """Whether this browser session is still connected, askable from any thread (always True
    outside a served app, e.g. under AppTest)."""
    ctx = get_script_run_ctx()
    if ctx is None or not Runtime.exists():
        return lambda: True
    runtime, session_id = Runtime.instance(), ctx.session_id
    return lambda: runtime.is_active_session(session_id)


def server_queue() -> RunQueue:
    """The process's run queue, set to the operator's settings."""
    settings = operator_settings()
    return process_queue(settings.max_concurrent_runs, settings.max_queued_runs, settings.abandon_after_s)


@contextmanager
def queue_note(what: str) -> Iterator[RunQueue]:
    """Around a page's synchronous model work that takes a slot of the run queue (``queue_slot``,
    in the work itself or around it): a line saying where it stands while the queue is busy, gone
    once the work is done; a full queue stops the page with its message."""
    queue = server_queue()
    running, waiting = queue.counts()
    note = st.empty()
    if running >= queue.slots or waiting:
        note.caption(_("{what}: {waiting}.").format(what=what, waiting=waiting_line(running + waiting)))
    try:
        yield queue
    except QueueFull as exc:
        note.empty()
        st.error(str(exc), icon=":material/hourglass_top:")
        st.stop()
    note.empty()


@contextmanager
def page_work(what: str) -> Iterator[None]:
    """A page's synchronous model work (a paged run, the Quantization lab) counted in the run
    queue: it waits its turn, the page saying so, and holds a slot while it runs."""
    with queue_note(what) as queue, queue_slot(queue):
        yield

