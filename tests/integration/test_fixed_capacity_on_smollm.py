"""Growing caches held at a fixed capacity (``kvviz.storage.fixed_capacity``, the layout CUDA graphs
replay) decode like the growing layout, on the embedded SmolLM2 (CPU, float32, eager steps):
the same tokens, the same evictions and scores, the same bytes held, nearly the same log-probs;
the full cache equals transformers' own greedy ``generate``."""

import numpy as np
import pytest
import torch

from kvviz.runtime import cuda_graphs
from kvviz.runtime import engine
from kvviz.runtime.policy_cache import PolicyCache
from kvviz.policies import build
from kvviz.record.text import encode_prompt

STEPS = 5
# every spec whose cache grows at decode and whose store is held at a fixed capacity
CONVERTED = [
    ("full", {}, None),
    ("snapkv", {"window": 4}, 12),
    ("pyramidkv", {"window": 4, "beta": 4.0}, 12),
    ("snapkv+quant", {"bits": 4}, 12),
    ("quant", {"bits": 2, "symmetric": True}, None),
    ("quant", {"bits": 8}, None),
    ("lowrank", {"rank": 8}, None),
    ("head_share", {"groups": 1}, None),
    ("pyramidkv+lowrank", {"window": 4, "rank": 8}, 12),
    ("kivi", {"residual": 8}, None),
    ("snapkv+kivi", {"window": 4, "residual": 16, "bits": 4}, 12),  # the kept prompt within the residual
    ("quant", {"axis": "per_channel", "group_size": 4}, None),
]


@pytest.fixture(scope="module")
def ids(smollm):
    return encode_prompt(smollm.tokenizer, "Name three lighthouses.", chat=True)


def run(smollm, ids, spec, params, budget, fixed, steps=STEPS):
    return engine.run(
        smollm.model, smollm.tokenizer, ids, spec, params=params, budget=budget, max_new_tokens=steps,
        stop_at_eos=False, fixed_capacity=fixed, keep_logprobs=True,
    )


def test_fixed_capacity_full_equals_transformers_generate(smollm, ids):
    trace = run(smollm, ids, "full", None, None, fixed=True, steps=8)
    ref = smollm.model.generate(torch.tensor([ids]), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert trace.extra["fixed_capacity"] and trace.timings["decode_path"] == "eager"  # no CUDA here
    assert trace.generated_ids == ref[0, len(ids):].tolist()
    assert trace.kv_bytes == trace.kv_bytes_full  # the entries held, not the buffers' slots
    # the buffers hold the prompt plus one slot per new token, every layer and KV head
    assert trace.extra["kv_bytes_reserved"] == (len(ids) + 8) * smollm.summary.kv_bytes_per_token


@pytest.mark.parametrize(("spec", "params", "budget"), CONVERTED, ids=lambda v: str(v))
def test_fixed_capacity_decodes_like_the_growing_cache(smollm, ids, spec, params, budget):
    growing = run(smollm, ids, spec, params, budget, fixed=False)
    fixed = run(smollm, ids, spec, params, budget, fixed=True)
    assert (growing.extra["fixed_capacity"], fixed.extra["fixed_capacity"]) == (False, True)
    assert fixed.generated_ids == growing.generated_ids
    np.testing.assert_array_equal(fixed.evicted_at_step, growing.evicted_at_step)
    np.testing.assert_array_equal(fixed.scores, growing.scores)  # NaN where nothing was scored
    for step in range(STEPS):
        for layer in (0, fixed.n_layers - 1):
            np.testing.assert_array_equal(fixed.kept_positions(step, layer, 1), growing.kept_positions(step, layer, 1))
    assert fixed.kv_bytes == growing.kv_bytes
    assert fixed.bookkeeping_bytes == growing.bookkeeping_bytes
    assert fixed.extra["kv_bytes_reserved"] >= fixed.kv_bytes[-1]
    # the attention reads masked buffers instead of the held entries (another sdpa kernel):
    # float rounding only, which a quantizer amplifies where a value sits on a code boundary
    # (a 1e-6 change of one key moves it by a whole code step)
    quantized = "quant" in spec or "kivi" in spec
    atol = 5e-2 if quantized else 1e-5
    torch.testing.assert_close(fixed.extra["logprobs"].exp(), growing.extra["logprobs"].exp(), rtol=0, atol=atol)
    if growing.store_error is not None:
        rtol = 1e-2 if quantized else 1e-5
        np.testing.assert_allclose(fixed.store_error.key, growing.store_error.key, rtol=rtol)
        np.testing.assert_allclose(fixed.store_error.value, growing.store_error.value, rtol=rtol)


def test_a_selector_that_evicts_at_decode_keeps_its_own_layout(smollm, ids):
    trace = run(smollm, ids, "h2o", None, 12, fixed=True, steps=2)
    assert not trace.extra["fixed_capacity"] and trace.kv_bytes[-1] == trace.extra["kv_bytes_reserved"]


def prefilled(smollm, ids, spec, params=None, budget=None) -> PolicyCache:
    """A cache after the prompt's forward, as Decoder.after_prefill finds it."""
    cfg = smollm.model.config
    cache = PolicyCache(build(spec, params, budget=budget), cfg.num_hidden_layers, len(ids), len(ids) + 4, cfg.num_key_value_heads, torch.device("cpu"))
    with torch.inference_mode(), cache.attached(smollm.model):
        engine.prefill(smollm.model, cache, ids)
    return cache


@pytest.mark.parametrize(
    ("spec", "params", "budget", "graphs"),
    [
        ("full", None, None, True),
        ("snapkv+quant", None, 12, True),
        ("lowrank", None, None, True),
        ("head_share", None, None, True),
        ("h2o+kivi", None, 12, True),  # a steady budget: any store keeps its shapes
        ("kivi", None, None, True),  # grows, with a full-precision tail
        ("quant", {"axis": "per_channel"}, None, True),
        ("random", None, 12, True),  # draws from the run's generator, registered with the graph
        ("quest", {"read_budget": 8}, None, True),  # a retriever: its read set in static shapes
        ("snapkv+quest", {"read_budget": 8}, 12, True),
    ],
)
def test_which_runs_replay_cuda_graphs(smollm, ids, spec, params, budget, graphs):
    """What ``cuda_graphs.usable`` answers for a CUDA run, after the prefill (the device type is all
    it reads of the device, so the question can be asked of a CPU cache)."""
    cache = prefilled(smollm, ids, spec, params, budget)
    assert cuda_graphs.usable(cache, torch.device("cuda"), sample=False, model=smollm.model) is graphs
    assert not cuda_graphs.usable(cache, torch.device("cuda"), sample=True, model=smollm.model)
    assert not cuda_graphs.usable(cache, torch.device("cpu"), sample=False, model=smollm.model)
