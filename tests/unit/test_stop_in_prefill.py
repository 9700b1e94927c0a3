"""Stop during a prefill, on the tiny random Llama (2 decoder layers): the engine asks before each
layer and ends the run there with nothing generated; the comparison, the Live job and the run
store each say what was left. A long prompt on a CPU takes minutes to read: Stop must not wait."""

from __future__ import annotations

import pytest
import torch

from kvviz.runtime import engine
from kvviz.live import run as live_run
from kvviz.live.job import LiveJob
from kvviz.runs import store as run_store
from kvviz.runtime.jobs import Stopped
from kvviz.policies.spec import PolicySpec
from tests.unit.tiny_comparison import PROMPT, Tok, tiny_comparison

N_LAYERS = 2


def hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_stop_is_asked_before_each_layer_of_the_prefill_and_after_each_token(tiny_llama):
    asks, steps = [], []
    trace = engine.run(
        tiny_llama, Tok(), PROMPT, "h2o:budget=24", max_new_tokens=5, on_step=steps.append,
        should_stop=lambda: asks.append(len(steps)) or False,
    )
    assert trace.n_steps == 5
    # by hand: once per decoder layer while the prompt is read (no token yet), then once per token
    assert asks == [0] * N_LAYERS + [1, 2, 3, 4, 5]


@pytest.mark.parametrize("policy", ["full", "h2o:budget=24", "snapkv:budget=24,window=4"])
def test_stop_in_the_prefill_ends_the_run_at_that_layer(tiny_llama, policy):
    before = hooks(tiny_llama)
    asks, steps = [], []

    def stop_at_the_second_layer():
        asks.append(1)
        return len(asks) == 2

    with pytest.raises(Stopped):
        engine.run(tiny_llama, Tok(), PROMPT, policy, max_new_tokens=5, on_step=steps.append, should_stop=stop_at_the_second_layer)
    assert len(asks) == 2 and steps == []  # the first layer ran, the second did not start, nothing was generated
    assert hooks(tiny_llama) == before
    # the model is left as it was: the full cache then gives transformers' own greedy output
    after = engine.run(tiny_llama, Tok(), PROMPT, "full", max_new_tokens=6, stop_at_eos=False)
    expected = tiny_llama.generate(torch.tensor([PROMPT]), max_new_tokens=6, do_sample=False)[0, len(PROMPT) :].tolist()
    assert after.generated_ids == expected


def test_a_comparison_stopped_in_a_prefill_keeps_what_finished(tiny_llama):
    assert tiny_comparison(tiny_llama, should_stop=lambda: True) is None  # Stop in the full cache's prefill
    started = []
    out = tiny_comparison(
        tiny_llama, on_progress=lambda p: started.append((p.name, p.tokens)), should_stop=lambda: ("p2", 0) in started,
    )
    assert out.stopped and [r.spec.name for r in out.runs] == ["h2o"]  # p2 stopped while reading the prompt
    assert ("p2", 1) not in started  # it generated nothing


class StopInPhase:
    """A job's stop flag that is set while the job is in ``phase`` (Stop pressed during that phase)."""

    def __init__(self, job, phase: str):
        self.job, self.phase = job, phase

    def is_set(self) -> bool:
        return self.job.phase == self.phase

    def set(self) -> None:
        pass


def live_job(model, compare: bool = True) -> LiveJob:
    request = live_run.LiveRequest(PolicySpec.parse("h2o:budget=24"), 5, PROMPT, compare=compare)
    return LiveJob(model, Tok(), request)


def test_the_live_job_says_it_stopped_while_reading_the_prompt(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("KVVIZ_CACHE_DIR", str(tmp_path))
    job = live_job(tiny_llama)
    job.stop()  # pressed before the prefill's first layer
    assert job.start().wait(60)
    assert job.phase == "stopped" and job.error is None and job.result is None
    assert job.policy_ids == [] and job.notice == live_run.STOPPED_IN_PREFILL
    stored = run_store.load(job.request.run_id)
    assert stored.meta["state"] == "stopped" and stored.meta["notice"] == live_run.STOPPED_IN_PREFILL
    assert "policy" not in stored.traces and not stored.interrupted


def test_the_live_job_stopped_in_the_full_cache_prefill_keeps_the_policy_run(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("KVVIZ_CACHE_DIR", str(tmp_path))
    job = live_job(tiny_llama)
    job._stop = StopInPhase(job, "full")
    assert job.start().wait(60)
    result = job.result
    assert job.phase == "stopped" and job.notice is None and job.full_ids == []
    assert result.stopped_in == "full" and result.full is None and result.forced is None
    assert result.trace.n_steps == 5 and result.trace.stopped_by == "max_new_tokens"  # the policy's run is whole


def test_the_progress_line_says_the_prompt_is_being_read(tiny_llama):
    job = live_job(tiny_llama)
    job.phase = "policy"
    assert job.progress()[1] == f"Generating with the policy: reading the prompt ({len(PROMPT)} tokens)"
    job.policy_ids.append(3)
    assert job.progress()[1] == "Generating with the policy: 1 / 5 tokens"
