"""What each selector declares it always keeps (``Selector.protection``), against the papers'
rules worked out by hand, and how the token states read it from the Trace alone."""

from __future__ import annotations

import numpy as np
import pytest
from live_synthetic import make_trace

from kvviz.policies import BudgetSelector, build, registry
from kvviz.record.token_states import Scope, token_records
from kvviz.record.trace import Protection


def declared(spec, budget, **params):
    return build(spec, params, budget=budget).selector.protection(budget)


@pytest.mark.parametrize(
    "spec, budget, params, expected",
    [
        ("window", 20, {}, Protection(recent=20)),  # the budget is the window
        ("streaming_llm", 20, {"n_sink": 4}, Protection(n_sink=4, recent=16)),  # budget = n_sink + window
        # budget = n_global + random_blocks x block_size + window
        ("sparse_pattern", 30, {"n_global": 2, "block_size": 4, "random_blocks": 3}, Protection(n_sink=2, recent=16)),
        ("h2o", 20, {"recent": 16}, Protection(recent=16)),  # any split: heavy hitters take budget - recent
        ("h2o", 12, {"recent": 16}, Protection(recent=12)),  # capped at the budget
        ("h2o", 40, {"recent": 16}, Protection(recent=16)),
        ("merge", 20, {"recent": 4}, Protection(recent=4)),
        ("knorm", 20, {"n_sink": 2, "recent": 3}, Protection(n_sink=2, recent=3)),
        ("lru", 6, {"recent": 8}, Protection(recent=6)),  # capped at the budget
        ("lfu", 20, {"recent": 8}, Protection(recent=8)),
        # the observation window at the end of the prompt, at most the budget
        ("snapkv", 24, {"window": 8}, Protection(recent=8, anchored_at_prompt=True)),
        ("snapkv", 6, {"window": 8}, Protection(recent=6, anchored_at_prompt=True)),
        ("pyramidkv", 24, {"window": 8}, Protection(recent=8, anchored_at_prompt=True)),
        ("tova", 20, {}, Protection()),
        ("random", 20, {}, Protection()),
    ],
)
def test_selectors_declare_what_they_protect(spec, budget, params, expected):
    assert declared(spec, budget, **params) == expected


def test_every_selector_declares_a_protection_within_its_budget():
    for name, cls in registry().items():
        if not issubclass(cls, BudgetSelector):  # a retriever protects nothing: it evicts nothing
            continue
        p = build(name, budget=None if name == "full" else 16).selector.protection(None if name == "full" else 16)
        assert isinstance(p, Protection) and p.n_sink + p.recent <= 16, name


def states(trace, step, scope=Scope(0, 0)):
    return [r.state for r in token_records(trace, step, scope)]


def test_token_states_come_from_the_recorded_protection():
    # the synthetic trace protects 1 sink and 2 recent tokens: at step 1 the cache ends at 6
    t = make_trace()
    assert states(t, 1)[:7] == ["sink", "kept", "evicted", "evicted_now", "high_score", "recent", "recent"]
    # nothing protected: the same positions are plain kept (or high score)
    bare = make_trace(protection=Protection())
    assert states(bare, 1)[0] != "sink" and "recent" not in states(bare, 1)
    # a prompt-only selector: its window ends at the prompt's end (positions 4 and 5), however far decoding went
    ev = np.full((2, 2, 10), -1, dtype=np.int32)
    ev[:, :, 1:3] = 0
    anchored = make_trace(evicted_at_step=ev, protection=Protection(recent=2, anchored_at_prompt=True))
    assert states(anchored, 3)[4:10] == ["recent", "recent", "kept", "kept", "kept", "next"]
