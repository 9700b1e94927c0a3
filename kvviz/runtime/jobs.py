"""A run on a background thread that a page polls (the Live run, a comparison, a sweep)."""

from __future__ import annotations

import threading


class Stopped(Exception):
    """Stop came where a run cannot end with what it has (between the decoder layers of a prefill,
    or between the runs of a sweep): the run yields nothing, and the job says where it stopped."""


class BackgroundJob:
    """``start()`` runs ``run()`` on a daemon thread named ``thread_name``; ``stop()`` asks it to
    end at its next token, or at the next decoder layer of a prefill (``run`` passes
    ``self._stop.is_set`` as its ``should_stop``)."""

    thread_name = "kvviz-job"

    def __init__(self):
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        raise NotImplementedError

    def start(self):
        self._thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stop.is_set()

    def _join(self, timeout: float | None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
