"""A sweep spread over worker processes (and Ray actors: Ray is in the test extra) gives the rows
of the in-process sweep: same order, same numbers (each run's wall time aside)."""

from __future__ import annotations

import sys
import types

import pytest

from kvviz.record import examples as data
from kvviz.sweep import run as sweep
from kvviz.sweep import spread

SETTINGS = sweep.SweepSettings(
    policies=("full", "window", "streaming_llm:n_sink=4"), ratios=(0.5,),
    text=data.long_document(), context=40, continuation=8,
)
LOADER = spread.Loader(None, "cpu", "float32")


def numbers(result) -> list[dict]:
    """The rows without their wall times; floats to 1e-5 (a worker's torch uses its share of the
    CPU threads, and a different thread count sums in another order: the last digits move)."""
    return [
        {k: pytest.approx(v, rel=1e-5) if isinstance(v, float) else v for k, v in r.to_dict().items() if k != "seconds"}
        for r in result.rows
    ]


@pytest.fixture(autouse=True)
def plain_main(monkeypatch):
    """A spawned worker re-runs the parent's ``__main__`` file (multiprocessing's rule). A Streamlit
    AppTest earlier in this process leaves its page script there, which must not run in a worker:
    give the workers pytest's plain main back, as the CLI gives them ``kvviz.__main__``."""
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))


@pytest.fixture(scope="module")
def in_process(smollm):
    return sweep.run(smollm.model, smollm.tokenizer, SETTINGS, model_name=smollm.summary.name)


def test_two_workers_give_the_in_process_rows_and_report_progress(in_process):
    seen = []
    result = spread.run(SETTINGS, loader=LOADER, workers=2, on_progress=seen.append)
    assert len(in_process.rows) == 3 and not result.stopped
    assert numbers(result) == numbers(in_process)
    assert result.reference["ppl"] == pytest.approx(in_process.reference["ppl"], rel=1e-5)
    assert (result.model, result.device, result.dtype) == (in_process.model, in_process.device, in_process.dtype)
    assert [p.label for p in seen if p.label] == ["full cache (reference)", "full", "window · 50%", "streaming_llm:n_sink=4 · 50%"]
    assert seen[-1].done == seen[-1].total == 4 and seen[-1].label == ""
    assert [p.done for p in seen] == sorted(p.done for p in seen)


def test_a_stop_starts_nothing_more_and_keeps_what_finished(in_process):
    progress = []
    result = spread.run(SETTINGS, loader=LOADER, workers=1, on_progress=progress.append, should_stop=lambda: len(progress) >= 2)
    assert result.stopped
    assert len(result.rows) < 3
    assert numbers(result) == numbers(in_process)[: len(result.rows)]


def test_ray_actors_give_the_in_process_rows(in_process, in_ci):
    """On a local Ray cluster of the CPU (in CI, where ``make setup`` installs Ray, a missing Ray fails)."""
    if in_ci:
        import ray
    else:
        ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        result = spread.run(SETTINGS, loader=LOADER, workers=2, use_ray=True)
    finally:
        ray.shutdown()
    assert numbers(result) == numbers(in_process)
