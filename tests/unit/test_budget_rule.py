"""One rule turns a ratio into a budget (entries per layer and KV head), and every route uses it:
the selector, the spec, the policy cache. The expected numbers are worked out by hand."""

import pytest
import torch

from kvviz.policies import build
from kvviz.policies.params import ratio_budget
from kvviz.policies.spec import PolicySpec
from kvviz.runtime.policy_cache import PolicyCache

# (ratio, prompt tokens, budget): ratio x tokens to the nearest whole number, a half to the even one, at least 1
BY_HAND = [
    (0.25, 7, 2),  # 1.75
    (0.25, 9, 2),  # 2.25
    (0.25, 303, 76),  # 75.75
    (0.25, 37, 9),  # 9.25: the Live page's default prompt
    (0.25, 6, 2),  # 1.5: a half goes to the even 2
    (0.25, 10, 2),  # 2.5: a half goes to the even 2
    (0.5, 7, 4),  # 3.5 -> 4
    (0.5, 5, 2),  # 2.5 -> 2
    (0.07, 150, 10),  # 10.5 -> 10 (in floats 0.07 x 150 = 10.500000000000002, which rounds to 11)
    (0.3, 5, 2),  # 1.5 -> 2
    (0.1, 5, 1),  # 0.5 -> 0, raised to the minimum of 1
    (0.001, 7, 1),  # 0.007 -> the minimum
    (0.01, 1, 1),  # a one-token prompt keeps its token
    (1.0, 303, 303),  # the whole prompt
]


@pytest.mark.parametrize("ratio, prompt_len, budget", BY_HAND)
def test_ratio_budget_by_hand(ratio, prompt_len, budget):
    assert ratio_budget(ratio, prompt_len) == budget


@pytest.mark.parametrize("ratio, prompt_len, budget", BY_HAND)
def test_every_route_gives_the_same_budget(ratio, prompt_len, budget):
    spec = PolicySpec.create("h2o", {"recent": 0}, ratio=ratio)
    assert spec.resolve_budget(prompt_len) == budget
    pipeline = spec.pipeline()
    assert pipeline.selector.resolve_budget(prompt_len) == budget
    cache = PolicyCache(pipeline, n_layers=2, prompt_len=prompt_len, capacity=4, n_kv_heads=1, device=torch.device("cpu"))
    assert cache.budget == budget and cache.layer_budgets == [budget, budget]


def test_a_budget_given_as_entries_is_taken_as_is():
    assert build("window", budget=7).selector.resolve_budget(7) == 7
    assert build("snapkv", budget=1).selector.resolve_budget(303) == 1
