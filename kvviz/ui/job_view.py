"""How a page follows a background job (``kvviz.runtime.jobs.BackgroundJob``: the Live run, a
comparison, a sweep): Run and Stop, a progress bar while the job runs, then how it ended (its
error, or the notice of a stop that left nothing to show).

A page keeps one ``JobView(prefix)``; its session_state keys are ``<prefix>.job``,
``.error``, ``.notice`` and ``.run_requested``, its buttons' keys ``<prefix>.run`` and ``.stop``.
"""

from __future__ import annotations

import time
from typing import Callable

import streamlit as st

from kvviz.runtime.jobs import BackgroundJob
from kvviz.ui.token_html import md_escape

POLL_S = 0.25


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

    def start(self, job: BackgroundJob) -> BackgroundJob:
        """Start ``job`` and follow it; the last job's messages go."""
        ss = st.session_state
        ss[self.job_key] = job.start()
        ss[self.error_key] = ss[self.notice_key] = None
        return job

    def buttons(self, run_column, stop_column) -> None:
        """▶ Run (off while a job is on) and ■ Stop (on only then)."""
        busy = self.job is not None
        run_column.button("▶ Run", type="primary", on_click=self._request, disabled=busy, key=f"{self.prefix}.run", width="stretch")
        stop_column.button("■ Stop", on_click=self._stop, disabled=not busy, key=f"{self.prefix}.stop", width="stretch")

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
        shown = None
        while True:
            ended = not job.running
            now = job.progress()
            if now != shown:  # redraw only what changed: the run, not the page, should use the CPU
                bar.progress(now[0], text=now[1])
                if draw is not None:
                    draw(job)
                shown = now
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
            st.warning(notice, icon=":material/stop_circle:")
