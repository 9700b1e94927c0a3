"""Graph captures and the background builder of fused kernels never overlap
(``kvviz.runtime.cuda_graphs.no_capture``): a capture that finds the builder at work gives up at
once (its run steps eagerly and captures later: it never waits for the compiler); a capture that
finds another run's capture waits for it (a fraction of a second)."""

import threading
import time

from kvviz.runtime import cuda_graphs


def builder() -> tuple[threading.Thread, threading.Event, threading.Event]:
    """A started thread that works as the builder does (inside ``no_capture``) once it gets in,
    until ``leave`` is set: (thread, inside, leave)."""
    inside, leave = threading.Event(), threading.Event()

    def work():
        with cuda_graphs.no_capture():
            inside.set()
            leave.wait(5)

    t = threading.Thread(target=work)
    t.start()
    return t, inside, leave


def test_a_capture_does_not_wait_for_the_builder():
    t, inside, leave = builder()
    inside.wait(5)
    t0 = time.perf_counter()
    assert cuda_graphs._take_capture_lock() is False
    assert time.perf_counter() - t0 < 0.5
    leave.set()
    t.join()
    assert cuda_graphs._take_capture_lock() is True  # the builder is done: the capture goes ahead
    cuda_graphs._CAPTURE_LOCK.release()


def test_a_capture_waits_for_another_runs_capture():
    assert cuda_graphs._take_capture_lock()
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(cuda_graphs._take_capture_lock()))
    t.start()
    time.sleep(0.2)
    assert not got  # still waiting: another capture, not the builder
    cuda_graphs._CAPTURE_LOCK.release()
    t.join(5)
    assert got == [True]
    cuda_graphs._CAPTURE_LOCK.release()


def test_the_builder_waits_for_a_capture_in_progress():
    assert cuda_graphs._take_capture_lock()
    t, entered, leave = builder()
    assert not entered.wait(0.2)
    cuda_graphs._CAPTURE_LOCK.release()
    assert entered.wait(5)
    leave.set()
    t.join(5)
    assert not cuda_graphs._building.is_set() and not cuda_graphs._CAPTURE_LOCK.locked()
