"""The background-job base (kvviz.runtime.jobs): one place turns what ended a run into a line a
person reads, owns Stop and the states a page polls; and the one input check (kvviz.runtime.inputs)."""

from __future__ import annotations

import threading

import pytest
import torch

from kvviz.policies import PolicyError
from kvviz.policies.spec import PolicySpec
from kvviz.record.text import PromptError
from kvviz.runtime import jobs
from kvviz.runtime.inputs import InputError, check_run
from kvviz.runtime.jobs import BackgroundJob, Stopped


class Raises(BackgroundJob):
    def __init__(self, exc: BaseException):
        super().__init__()
        self.exc, self.finished = exc, False

    def work(self) -> None:
        raise self.exc

    def finish(self) -> None:
        self.finished = True


class Counts(BackgroundJob):
    """Counts to ``n`` unless stopped; stopped in ``raise_at`` it raises Stopped (a prefill)."""

    def __init__(self, n: int, stop_at: int | None = None, raise_at: int | None = None):
        super().__init__()
        self.n, self.stop_at, self.raise_at, self.count = n, stop_at, raise_at, 0
        self.gate = threading.Event()

    def work(self) -> None:
        self.gate.wait(10)
        for i in range(self.n):
            if i == self.stop_at:
                self.stop()  # as if Stop were pressed at this step
            if self.should_stop():
                if i == self.raise_at:
                    raise Stopped
                break
            self.count += 1
        self.result = self.count

    def running_progress(self) -> tuple[float, str]:
        return self.count / self.n, f"{self.count} / {self.n}"


@pytest.mark.parametrize(
    "exc, message",
    [
        (PolicyError("budget 50 is larger than the prompt (40 tokens)."), "budget 50 is larger than the prompt (40 tokens)."),
        (PromptError("The prompt is empty."), "The prompt is empty."),
        (ValueError("bits must be one of 8, 4, 2, not 3"), "bits must be one of 8, 4, 2, not 3"),
        (KeyError("layer"), "KeyError: 'layer'"),
        (RuntimeError("shape mismatch\n  at line 3\n  at line 9"), "RuntimeError: shape mismatch"),
    ],
)
def test_what_ended_a_run_becomes_one_line(exc, message):
    job = Raises(exc).start()
    assert job.wait(10) and not job.running
    assert job.error == message and job.result is None and job.notice is None
    assert job.finished  # finish runs after a failure too
    assert job.progress() == (1.0, "Failed")


def test_out_of_memory_says_so_and_frees_the_cache(monkeypatch):
    freed = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(1))
    job = Raises(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")).start()
    assert job.wait(10)
    assert job.error.startswith("The device ran out of memory for this run (CUDA out of memory. Tried to allocate 2.00 GiB)")
    assert "try a shorter prompt" in job.error and freed == [1]
    assert job.progress() == (1.0, "Failed")


def test_an_unexpected_error_is_cut_short():
    job = Raises(RuntimeError("x" * 5000)).start()
    assert job.wait(10)
    assert job.error.startswith("RuntimeError: xxx") and len(job.error) == jobs.MAX_MESSAGE


def test_progress_while_running_then_done():
    job = Counts(4)
    assert job.running and job.progress() == (0.0, "0 / 4")  # before start: not ended
    job.start()
    assert job.running  # held at the gate
    job.gate.set()
    assert job.wait(10)
    assert (job.result, job.error, job.stopped, job.stop_raised) == (4, None, False, False)
    assert job.progress() == (1.0, "Done")


def test_a_stopped_job_keeps_what_it_has():
    job = Counts(10, stop_at=3).start()
    job.gate.set()
    assert job.wait(10)
    assert job.result == 3 and job.stopped and not job.stop_raised and job.error is None
    assert job.progress() == (1.0, "Stopped")


def test_stopped_raised_in_the_work_is_not_an_error():
    job = Counts(10, stop_at=2, raise_at=2).start()
    job.gate.set()
    assert job.wait(10)
    assert job.result is None and job.stop_raised and job.error is None
    assert job.progress() == (1.0, "Stopped")


def test_wait_times_out_while_the_job_runs():
    job = Counts(3).start()
    assert not job.wait(0.05) and job.running
    job.gate.set()
    assert job.wait(10) and job.result == 3


# ------------------------------------------------------------------------------ the input check


@pytest.mark.parametrize(
    "args, kw, message",
    [
        ((0, 8), {}, "The prompt is empty."),
        ((40, 0), {}, "New tokens must be at least 1, not 0."),
        ((40, 300), {"max_new_tokens": 256}, "New tokens must be between 1 and 256, not 300."),
        ((40, 20), {"max_context": 50}, "The prompt (40 tokens) plus 20 new tokens exceeds the model's context of 50."),
        ((40, 20), {"max_context": 50, "tokens_name": "continuation tokens"}, "plus 20 continuation tokens exceeds"),
        ((40, 8), {"specs": [PolicySpec.parse("window:budget=50")]}, "window: budget 50 is larger than the prompt (40 tokens)"),
        ((40, 8), {"specs": [PolicySpec.parse("h2o"), PolicySpec.parse("window:budget=50")], "number_specs": True},
         "p2 (window:budget=50): window: budget 50"),
    ],
)
def test_the_input_check_names_the_problem(args, kw, message):
    with pytest.raises(InputError) as caught:
        check_run(*args, **kw)
    assert message in str(caught.value)
    assert isinstance(caught.value, PromptError) and isinstance(caught.value, PolicyError)  # callers that catch either


def test_the_input_check_lets_a_run_that_fits_pass():
    check_run(40, 10, max_context=50, specs=[PolicySpec.parse("h2o:budget=40")], max_new_tokens=256)
