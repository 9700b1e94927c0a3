"""The run store: a finished run reopens, a run cut short says it was interrupted, the store stays
bounded, and an uploaded trace file over the limit is refused with a message."""

from __future__ import annotations

import pytest

from kvviz.runs import store as run_store
from kvviz.record.trace import Trace
from tests.unit.live_synthetic import make_trace


@pytest.fixture(autouse=True)
def store_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KVVIZ_CACHE_DIR", str(tmp_path))
    return tmp_path / "runs"


class Result:  # what run_store.finish reads of a live_run.LiveResult
    def __init__(self, trace):
        self.trace, self.full, self.forced = trace, None, None
        self.wall_s, self.stopped_in, self.generated_text, self.full_text = {"policy": 1.5, "whole run": 1.5}, None, " A B", ""
        self.stopped = False


def test_a_finished_run_reopens_with_its_trace():
    rid = run_store.new_run_id()
    run_store.begin(rid, {"spec": "h2o:ratio=0.25"})
    assert run_store.load(rid).state == "running"
    trace = make_trace()
    run_store.finish(rid, Result(trace), None)
    stored = run_store.load(rid)
    assert stored.state == "done" and stored.meta["request"] == {"spec": "h2o:ratio=0.25"}
    assert stored.traces["policy"].tokens == trace.tokens and stored.meta["wall_s"]["whole run"] == 1.5
    assert (stored.traces["policy"].evicted_at_step == trace.evicted_at_step).all()


def test_a_reopened_run_keeps_what_the_policy_found():
    """duo_attention's streaming heads (a Trace's extras are not saved) come back with the run."""
    rid = run_store.new_run_id()
    run_store.begin(rid, {"spec": "duo_attention"})
    trace = make_trace()
    trace.extra["policy_details"] = {"Streaming heads": "1 of 2 KV heads · 0: SR"}
    run_store.finish(rid, Result(trace), None)
    assert run_store.load(rid).traces["policy"].extra["policy_details"] == {"Streaming heads": "1 of 2 KV heads · 0: SR"}


def test_a_run_no_job_is_running_was_interrupted():
    rid = run_store.new_run_id()
    run_store.begin(rid, {"spec": "h2o"})
    run_store.active.discard(rid)  # what a restarted server sees: nothing of this process runs it
    assert run_store.load(rid).interrupted


def test_unknown_and_malformed_ids_find_nothing():
    assert run_store.load("0" * 16) is None
    assert run_store.load("../../etc/passwd") is None and not run_store.valid_id("ABC")


def test_the_store_keeps_the_newest_runs(store_dir):
    ids = []
    for i in range(5):
        rid = run_store.new_run_id()
        run_store.begin(rid, {"i": i})
        run_store.finish(rid, None, "failed")
        ids.append(rid)
    run_store.prune(max_runs=3)
    kept = {p.name for p in store_dir.iterdir()}
    assert len(kept) == 3


def test_trace_files_round_trip_and_big_ones_are_refused():
    trace = make_trace()
    back = run_store.read_trace_file("t.json", trace.to_json().encode())
    assert isinstance(back, Trace) and back.tokens == trace.tokens
    with pytest.raises(run_store.TraceFileError, match="at most 50 MiB"):
        run_store.read_trace_file("big.json", b" " * (run_store.MAX_TRACE_FILE_BYTES + 1))
    with pytest.raises(run_store.TraceFileError, match="x.json: trace: not a kvviz trace"):
        run_store.read_trace_file("x.json", b'{"model": 1}')
    with pytest.raises(run_store.TraceFileError, match="nan.json: The file holds NaN, which strict JSON does not allow"):
        run_store.read_trace_file("nan.json", trace.to_json().replace("null", "NaN", 1).encode())
