"""The run queue of kvviz.runtime.jobs with real threads: first in, first out; at most ``slots``
jobs at once; each waiting job knows how many runs are ahead of it; Stop and a vanished owner
leave the line; a job that fails (out of memory included) frees its slot for the next."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from kvviz.runtime.jobs import ABANDONED, LEFT_QUEUE, BackgroundJob, QueueFull, RunQueue

WAIT = 10  # seconds any one wait in these tests may take at most


class Held(BackgroundJob):
    """Runs until ``release`` is set (or it is stopped); writes its name into ``log`` when it
    starts and tracks how many of its kind run at once."""

    live = 0
    most = 0
    lock = threading.Lock()

    def __init__(self, name: str, log: list, queue: RunQueue, fail: BaseException | None = None):
        super().__init__()
        self.name, self.log, self.fail = name, log, fail
        self.release = threading.Event()
        self.started = threading.Event()
        self.queue = queue

    def work(self) -> None:
        with Held.lock:
            Held.live += 1
            Held.most = max(Held.most, Held.live)
        self.log.append(self.name)
        self.started.set()
        try:
            if self.fail is not None:
                raise self.fail
            while not self.release.wait(0.02):
                if self.should_stop():
                    return
            self.result = self.name
        finally:
            with Held.lock:
                Held.live -= 1


def until(condition, timeout: float = WAIT) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture(autouse=True)
def _count_from_zero():
    Held.live = Held.most = 0


def test_first_in_first_out_with_the_places_reported():
    q, log = RunQueue(slots=1), []
    first = Held("first", log, q).start()
    assert first.started.wait(WAIT)
    waiting = [Held(f"w{i}", log, q).start() for i in range(5)]
    # one running, then 0..4 waiting before each: 1..5 runs ahead
    assert until(lambda: [q.ahead_of(j) for j in waiting] == [1, 2, 3, 4, 5])
    assert [j.progress()[1] for j in waiting[:2]] == ["Waiting in the queue: 1 run ahead of yours", "Waiting in the queue: 2 runs ahead of yours"]
    assert q.counts() == (1, 5)
    first.release.set()
    for job in waiting:  # each is admitted only after the one before it ends
        assert job.started.wait(WAIT)
        assert q.ahead_of(job) is None and job.waited_s is not None and job.waited_s > 0
        job.release.set()
        assert job.wait(WAIT)
    assert log == ["first", "w0", "w1", "w2", "w3", "w4"]
    assert Held.most == 1
    assert [j.result for j in waiting] == ["w0", "w1", "w2", "w3", "w4"]
    assert q.counts() == (0, 0)


def test_two_slots_run_two_at_once_in_order():
    q, log = RunQueue(slots=2), []
    jobs = [Held(f"j{i}", log, q).start() for i in range(6)]
    assert until(lambda: len(log) == 2)
    time.sleep(0.2)
    assert log == ["j0", "j1"] and q.counts() == (2, 4)  # a third never starts while two run
    assert [q.ahead_of(j) for j in jobs[2:]] == [2, 3, 4, 5]
    for job in jobs:
        job.release.set()
        assert job.wait(WAIT)
    assert log == [f"j{i}" for i in range(6)] and Held.most == 2


def test_stop_leaves_the_queue_and_the_others_move_up():
    q, log = RunQueue(slots=1), []
    first = Held("first", log, q).start()
    assert first.started.wait(WAIT)
    a, b, c = (Held(n, log, q).start() for n in "abc")
    assert until(lambda: q.ahead_of(c) == 3)
    b.stop()
    assert b.wait(WAIT)  # it ended without ever running
    assert b.notice == LEFT_QUEUE and b.result is None and b.progress() == (1.0, "Stopped")
    assert q.ahead_of(c) == 2 and q.counts() == (1, 2)
    for job in (first, a, c):
        job.release.set()
    assert c.wait(WAIT) and a.wait(WAIT)
    assert log == ["first", "a", "c"]


def test_a_closed_tab_frees_its_place_waiting_or_running():
    q, log = RunQueue(slots=1, abandon_after_s=0.3), []
    tab_open = {"running": True, "waiting": True}
    running = Held("running", log, q)
    running.owner_alive = lambda: tab_open["running"]
    running.start()
    assert running.started.wait(WAIT)
    gone, kept = Held("gone", log, q), Held("kept", log, q)
    gone.owner_alive = lambda: tab_open["waiting"]
    gone.start(), kept.start()
    assert until(lambda: q.ahead_of(kept) == 2)

    tab_open["waiting"] = False  # the waiting job's tab closes: it leaves the line after the grace
    t = time.monotonic()
    assert gone.wait(WAIT)
    assert 0.3 <= time.monotonic() - t < 3
    assert gone.abandoned and gone.notice == ABANDONED and q.ahead_of(kept) == 1

    tab_open["running"] = False  # the running job's tab closes: it stops at its next check
    assert running.wait(WAIT) and running.abandoned and running.result is None
    assert kept.started.wait(WAIT)  # and its slot goes to the next in line
    kept.release.set()
    assert kept.wait(WAIT) and kept.result == "kept"
    assert log == ["running", "kept"]


def test_a_brief_disconnect_keeps_the_place():
    q = RunQueue(slots=1, abandon_after_s=5)
    blocker = Held("blocker", [], q).start()
    assert blocker.started.wait(WAIT)
    alive = iter([False, False] + [True] * 10_000)
    job = Held("job", [], q)
    job.owner_alive = lambda: next(alive)
    job.start()
    time.sleep(0.8)
    assert not job.abandoned and q.ahead_of(job) == 1
    blocker.release.set()
    assert job.started.wait(WAIT)
    job.release.set()
    assert job.wait(WAIT) and job.result == "job"


def test_a_full_queue_refuses_with_a_message():
    q = RunQueue(slots=1, max_waiting=2)
    jobs = [Held(f"j{i}", [], q).start() for i in range(3)]  # one runs, two wait
    assert jobs[0].started.wait(WAIT)
    with pytest.raises(QueueFull, match="KVVIZ_MAX_QUEUED_RUNS"):
        Held("one too many", [], q).start()
    assert q.counts() == (1, 2)
    for job in jobs:
        job.release.set()
        assert job.wait(WAIT)


@pytest.mark.parametrize("exc", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), RuntimeError("boom")])
def test_a_failed_run_frees_its_slot(exc):
    q, log = RunQueue(slots=1), []
    failing = Held("failing", log, q, fail=exc).start()
    after = Held("after", log, q).start()
    assert failing.wait(WAIT)
    assert failing.error and failing.progress()[1] == "Failed"
    if isinstance(exc, torch.OutOfMemoryError):
        assert "out of memory" in failing.error.lower()
    assert after.started.wait(WAIT)
    after.release.set()
    assert after.wait(WAIT) and after.result == "after" and after.error is None
    assert log == ["failing", "after"] and q.counts() == (0, 0)


def test_without_a_queue_a_job_runs_at_once():
    log = []
    jobs = [Held(f"j{i}", log, None) for i in range(3)]
    for job in jobs:
        job.queue = None
        job.start()
    assert until(lambda: len(log) == 3) and Held.most == 3
    for job in jobs:
        job.release.set()
        assert job.wait(WAIT)
