"""criticalkv, duo_attention and kvzip in a cache built without the engine (no model to read: the
mechanics tests, the paged engine, tests/gpu): what each says it does then, recomputed here in
float64 from the same random keys, values and queries."""

from __future__ import annotations

import math

import pytest
import torch

from kvviz.policies import build
from kvviz.runtime.policy_cache import PolicyCache

KV, Q, D, N, BUDGET = 3, 9, 16, 40, 12


@pytest.fixture(scope="module")
def tensors():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(*shape, generator=g) for shape in ((1, KV, N, D), (1, KV, N, D), (Q, N, D))]


def prefilled(spec, params, tensors):
    keys, values, queries = tensors
    cache = PolicyCache(build(spec, params, budget=BUDGET), 1, N, N + 2, KV, torch.device("cpu"))
    cache.layers[0].step(keys, values, torch.arange(N), queries)
    return cache.layers[0], cache.pipeline.selector


def attention(queries, keys):
    """(kv_heads, group, q, n) causal softmax, float64."""
    q = queries.double().view(KV, Q // KV, N, D)
    logits = torch.einsum("hgqd,hnd->hgqn", q, keys[0].double()) / math.sqrt(D)
    return logits.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf")).softmax(dim=-1)


def kept(layer):
    return [sorted(row.tolist()) for row in layer.positions]


def test_kvzip_scores_by_the_prompts_own_highest_attention(tensors):
    keys, _, queries = tensors
    layer, _ = prefilled("kvzip", {}, tensors)
    scores = attention(queries, keys).amax(dim=(1, 2))  # (kv_heads, n)
    assert kept(layer) == [sorted(r.tolist()) for r in scores.topk(BUDGET, dim=-1).indices]


def test_criticalkv_takes_the_values_own_l1_norm(tensors):
    keys, values, _ = tensors
    layer, _ = prefilled("criticalkv", {"scorer": "knorm", "first_stage_ratio": 0.5}, tensors)
    inner = -keys[0].double().norm(dim=-1)
    final = (inner + 1e-4) * values[0].double().abs().sum(dim=-1)
    final.scatter_(1, inner.topk(BUDGET // 2, dim=-1).indices, float("inf"))
    assert kept(layer) == [sorted(r.tolist()) for r in final.topk(BUDGET, dim=-1).indices]


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_duo_attention_ranks_the_heads_within_the_layer(tensors, ratio):
    keys, _, queries = tensors
    layer, policy = prefilled("duo_attention", {"head_ratio": ratio, "n_sink": 4}, tensors)
    window = torch.zeros(N, dtype=torch.bool)
    window[:4] = window[N - (BUDGET - 4):] = True
    outside = (attention(queries, keys)[:, :, -1].mean(dim=1) * ~window).sum(dim=-1)  # (kv_heads,)
    streaming = torch.zeros(KV, dtype=torch.bool)
    streaming[outside.argsort()[: round(KV * ratio)]] = True
    assert policy.streaming_heads == {0: streaming.tolist()}
    window_kept = window.nonzero().flatten().tolist()
    assert kept(layer) == ([window_kept] * KV if streaming.all() else [list(range(N))] * KV)
    assert "S" in policy.run_details()["Streaming heads"]
