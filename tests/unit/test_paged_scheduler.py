"""The paged scheduler decides without a model: plans, preemption and admission on hand-made
requests (tokens chosen by the test), and its events as typed values with the plain form the
page reads. Blocks worked out by hand in the comments."""

import dataclasses

import pytest

from kvviz.paged.block_manager import BlockManager
from kvviz.paged.events import BlockCopied, RequestAdmitted, RequestPreempted, RequestWaits
from kvviz.paged.scheduler import Request, Scheduler


def decode(s: Scheduler, plan, tokens: dict[str, int]) -> None:
    for row in plan.rows:
        r = s.by_id[row.rid]
        assert s.computed(r, prefill=row.rid in plan.prefills) == []
        s.take(r, tokens[row.rid])


def test_preemption_is_decided_from_the_pool_not_a_log():
    m = BlockManager(num_blocks=3, block_size=2)
    s = Scheduler(m)
    s.submit(Request("a", [1, 2, 3], 3))
    s.submit(Request("b", [4], 3))
    plan = s.schedule()  # step 1: a takes blocks 0 [1 2], 1 [3]; b block 2 [4]
    assert [r.rid for r in plan.rows] == ["a", "b"] and plan.prefills == {"a", "b"} and plan.added == {"a": [], "b": []}
    decode(s, plan, {"a": 9, "b": 8})
    decode(s, s.schedule(), {"a": 7, "b": 6})  # step 2: a [3 9], b [4 8]: both blocks full, no new one
    plan = s.schedule()  # step 3: a needs a block for 7, none left: b (admitted last) is preempted
    assert [r.rid for r in plan.rows] == ["a"] and plan.removed == ["b"] and not plan.prefills
    step3 = [e for e in m.events if e.step == 3]
    assert RequestPreempted(step=3, request="b", released=(2,)) in step3
    assert m.tables["a"] == [0, 1, 2] and s.by_id["b"].block_table == [2]  # the table b held last
    assert s.by_id["b"].status == "waiting" and s.by_id["b"].preemptions == 1
    decode(s, plan, {"a": 5})  # a's third token: finished, its blocks still held until released
    plan = s.schedule()  # step 4: b's 3 tokens need 2 blocks, none is free: it waits
    assert plan.rows == [] and [e for e in m.events if e.step == 4] == [RequestWaits(step=4, request="b", needs=2, available=0)]
    assert s.release_finished() == ["a"] and m.used == 0
    plan = s.schedule()  # step 5: b comes back, recomputed from its 3 tokens
    assert [r.rid for r in plan.rows] == ["b"] and plan.rows[0].token_ids == [4, 8, 6]
    assert RequestAdmitted(step=5, request="b", tokens=3, hit_tokens=0, resumed=True) in m.events


def test_events_are_frozen_values_with_the_plain_form():
    e = RequestAdmitted(step=1, request="r0", tokens=5, hit_tokens=4, resumed=False)
    assert e.to_dict() == {"step": 1, "kind": "admit", "request": "r0", "block": None,
                           "detail": {"tokens": 5, "hit_tokens": 4, "resumed": False}}
    assert BlockCopied(step=2, request="r1", block=3, src=1, logical=1).detail == {"src": 1, "logical": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.tokens = 6


def test_forks_share_the_prompt_blocks():
    m = BlockManager(num_blocks=8, block_size=2)
    s = Scheduler(m)
    s.submit(Request("p", [1, 2, 3], 2, seed=5, n=3))
    plan = s.schedule()
    children = s.computed(s.by_id["p"], prefill=True)
    assert [(c.rid, c.seed, c.cached) for c in children] == [("p.1", 6, 3), ("p.2", 7, 3)]
    assert [r.rid for r in s.running] == ["p", "p.1", "p.2"]
    assert m.tables["p.1"] == m.tables["p"] == [0, 1] and m.blocks[1].ref_count == 3
    assert [e.to_dict()["detail"] for e in m.events if e.kind == "fork"] == [{"parent": "p"}, {"parent": "p"}]
    assert plan.copies == []
