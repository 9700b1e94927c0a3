"""On a CUDA host (marked gpu, skipped elsewhere): retrievers decode through the CUDA graph path.
Their cache is held at a fixed capacity after the prefill and each step chooses its read set in
static shapes (``Retriever.read_fixed``), so the step is captured once and replayed: the replay
gives what eager steps over the same layout give (tokens, read sets, bytes), in float32 what the
growing layout gives, and a step never synchronizes with the host."""

import time

import numpy as np
import pytest
import torch

from kvviz.policies import build
from kvviz.record.text import encode_prompt
from kvviz.runtime import engine
from kvviz.runtime.policy_cache import PolicyCache

pytestmark = pytest.mark.gpu

SPECS = [
    ("quest", {"read_budget": 64, "page_size": 16}, None),
    ("sparq", {"read_budget": 64}, None),
    ("sparq", {"read_budget": 64, "mean_value": False}, None),
    ("simhash", {"read_budget": 64}, None),
    ("snapkv+quest", {"read_budget": 32, "page_size": 8}, 96),
]
TEXT = "Tell me about the history of lighthouses, their keepers and the lenses they used. " * 6


def run(loaded, spec, params, budget, **kw):
    ids = encode_prompt(loaded.tokenizer, TEXT, chat=True)
    return engine.run(loaded.model, loaded.tokenizer, ids, spec, params=params, budget=budget, max_new_tokens=40,
                      stop_at_eos=False, keep_logprobs=True, **kw)


@pytest.mark.parametrize(("spec", "params", "budget"), SPECS, ids=lambda v: str(v))
def test_graph_replay_of_a_retriever_equals_eager_steps(gpu_model, spec, params, budget):
    graphed = run(gpu_model, spec, params, budget, cuda_graphs=True)
    assert graphed.timings["decode_path"] == "graph" and graphed.extra["fixed_capacity"], graphed.timings.get("graph_failure")
    eager = run(gpu_model, spec, params, budget, cuda_graphs=False, fixed_capacity=True)  # the same layout, eagerly
    assert eager.timings["decode_path"] == "eager"
    assert graphed.generated_ids == eager.generated_ids
    np.testing.assert_array_equal(graphed.read_mask, eager.read_mask)
    assert 0 < graphed.read_mask[-1].sum() < graphed.read_mask[-1].size  # a part of the cache read
    assert (graphed.kv_bytes, graphed.read_bytes, graphed.summary_bytes) == (eager.kv_bytes, eager.read_bytes, eager.summary_bytes)
    np.testing.assert_array_equal(graphed.evicted_at_step, eager.evicted_at_step)
    torch.testing.assert_close(graphed.extra["logprobs"], eager.extra["logprobs"], rtol=0, atol=1e-3)


@pytest.mark.parametrize("spec", ["h2o+quest", "h2o+sparq"])
def test_graph_replay_of_a_retriever_after_an_evicting_selector_equals_eager_steps(gpu_model, spec):
    """A selector that evicts at decode holds its budget (every step keeps its shapes) and the
    retriever reads among the entries held: the steady path's graph, no fixed capacity."""
    graphed = run(gpu_model, spec, {"read_budget": 32}, 96, cuda_graphs=True)
    assert graphed.timings["decode_path"] == "graph" and not graphed.extra["fixed_capacity"], graphed.timings.get("graph_failure")
    eager = run(gpu_model, spec, {"read_budget": 32}, 96, cuda_graphs=False)
    assert graphed.generated_ids == eager.generated_ids
    np.testing.assert_array_equal(graphed.read_mask, eager.read_mask)
    np.testing.assert_array_equal(graphed.evicted_at_step, eager.evicted_at_step)
    assert (graphed.kv_bytes, graphed.read_bytes) == (eager.kv_bytes, eager.read_bytes)


@pytest.mark.parametrize(("spec", "params", "budget"), SPECS, ids=lambda v: str(v))
def test_graph_replay_of_a_retriever_equals_the_growing_cache_in_float32(gpu_model_fp32, spec, params, budget):
    graphed = run(gpu_model_fp32, spec, params, budget, cuda_graphs=True, capture_queries=True)
    growing = run(gpu_model_fp32, spec, params, budget, cuda_graphs=False, fixed_capacity=False, capture_queries=True)
    assert graphed.timings["decode_path"] == "graph" and not growing.extra["fixed_capacity"]
    assert graphed.generated_ids == growing.generated_ids
    # the masked, gathered attention rounds differently from the growing layout's (later layers'
    # keys move by float32 rounding): a read set may differ only where two ranks tie that closely
    assert (graphed.read_mask == growing.read_mask).mean() > 0.999
    assert (graphed.kv_bytes, graphed.read_bytes, graphed.summary_bytes) == (growing.kv_bytes, growing.read_bytes, growing.summary_bytes)
    np.testing.assert_allclose(graphed.lost_mass, growing.lost_mass, atol=1e-3)


@pytest.mark.parametrize("spec", ["quest", "sparq", "simhash", "snapkv+quest"])
def test_fixed_capacity_retriever_steps_do_not_synchronize(spec):
    """SmolLM2's shapes (9 query heads over 3 KV heads, head dim 64), one layer, a 512-token
    prompt, read budget 64: a decode step under ``torch.cuda.set_sync_debug_mode("error")``."""
    kv, q_heads, d, prompt, steps = 3, 9, 64, 512, 6
    g = torch.Generator(device="cuda").manual_seed(0)
    pipeline = build(spec, {"read_budget": 64, "full_layers": 0} if "quest" in spec else {"read_budget": 64},
                     budget=128 if "snapkv" in spec else None)
    cache = PolicyCache(pipeline, 1, prompt, prompt + steps, kv, torch.device("cuda"), generator=g, measure_lost_mass=True)
    layer = cache.layers[0]

    def forward(n, start):
        k, v = (torch.randn(1, kv, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
        q = torch.randn(q_heads, n, d, device="cuda", dtype=torch.bfloat16, generator=g)
        return layer.step(k, v, torch.arange(start, start + n, device="cuda"), q)

    forward(prompt, 0)
    cache.hold_fixed(steps)
    forward(1, prompt)  # the warm-up step (simhash copies its hyperplanes to the device once)
    torch.cuda.synchronize()
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    t0 = time.perf_counter()
    try:
        for s in range(1, steps):
            keys, _ = forward(1, prompt + s)
    finally:
        torch.cuda.set_sync_debug_mode(mode)
    torch.cuda.synchronize()
    assert cache.is_fixed and keys.shape[2] == cache.reader.read_width(0, layer.fixed.capacity)
    want = cache.reader.read_count(0, len(layer))  # the last step (number ``steps``) read as many per KV head
    assert 0 < want < len(layer) and (cache.records[0].read_at[0] == steps).sum(-1).tolist() == [want] * kv
    print(f"{spec}: {(time.perf_counter() - t0) / (steps - 1) * 1e6:.0f} us per layer step")
