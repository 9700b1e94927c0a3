"""On a host with two CUDA GPUs (marked gpu; skipped with fewer): a model split across the GPUs
computes what the same model computes on one GPU, under kvviz's policies.

A small random-weight Llama (4 layers, fixed seed, float32) is built twice with the same
weights: on cuda:0, and split by an explicit device map (embeddings and layers 0-1 on cuda:0,
layers 2-3, the final norm and the LM head on cuda:1, with accelerate's hooks, as
``from_pretrained(device_map=...)`` places a checkpoint). The split model must give the same
greedy tokens, the same evictions (step by step, every layer and KV head), the same scores and the
same log-probabilities as the one on one GPU, with each layer's cache on its own GPU; with a full
cache both must equal transformers' ``generate``. The embedded SmolLM2 loaded with
``device_map="auto"`` must decode as ``generate`` decodes with the same placement.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from kvviz.model import devices
from kvviz.runtime import engine
from kvviz.runtime.policy_cache import PolicyCache
from kvviz.model.random_model import IdTokenizer, random_llama
from kvviz.policies.spec import PolicySpec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"),
]

GPU_MODEL = os.environ.get("KVVIZ_MODEL", "").strip() or None  # read at collection, before the session pins it (conftest)
LAYERS = 4
SPLIT_MAP = {
    "model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": 0,
    "model.layers.2": 1, "model.layers.3": 1, "model.norm": 1, "lm_head": 1,
}
CUDA0, CUDA1 = torch.device("cuda", 0), torch.device("cuda", 1)
POLICIES = [
    ("full", None),
    ("h2o", 24),
    ("snapkv", 24),
    ("streaming_llm", 24),
    ("random", 24),  # the run's one stream of random draws, whichever GPU a layer is on
    ("quant", None),
    ("snapkv+quant", 24),
]


def small_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=LAYERS, num_attention_heads=8,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, tie_word_embeddings=False,
        initializer_range=0.2,  # peaked logits and attention: greedy choices and evictions far from ties
        attn_implementation="sdpa",
    )


@pytest.fixture(scope="module")
def pair():
    if not devices.accelerate_available():
        pytest.fail(devices.ACCELERATE_NEEDED)
    one = random_llama(small_config(), {"": 0}, dtype=torch.float32, seed=3)
    split = random_llama(small_config(), SPLIT_MAP, dtype=torch.float32, seed=3)
    return one, split


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 512, (96,), generator=torch.Generator().manual_seed(0)).tolist()


def test_the_two_models_hold_the_same_weights_where_the_map_says(pair):
    one, split = pair
    for (name, a), (_, b) in zip(one.state_dict().items(), split.state_dict().items()):
        assert torch.equal(a, b.to(a.device)), name
    assert devices.layer_devices(one) == [CUDA0] * LAYERS
    assert devices.layer_devices(split) == [CUDA0, CUDA0, CUDA1, CUDA1]
    assert devices.input_device(split) == CUDA0
    assert split.lm_head.weight.device == CUDA1


@pytest.mark.parametrize("policy, budget", POLICIES)
def test_split_equals_one_gpu(pair, ids, policy, budget):
    one, split = pair
    kw = dict(budget=budget, max_new_tokens=24, stop_at_eos=False, capture_queries=True, keep_logprobs=True)
    ref = engine.run(one, IdTokenizer(), ids, policy, cuda_graphs=False, **kw)
    got = engine.run(split, IdTokenizer(), ids, policy, **kw)
    assert got.generated_ids == ref.generated_ids
    np.testing.assert_array_equal(got.evicted_at_step, ref.evicted_at_step)
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-4, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(got.lost_mass, ref.lost_mass, rtol=1e-4, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(got.extra["logprobs"].cpu(), ref.extra["logprobs"].cpu(), rtol=1e-4, atol=1e-4)
    assert got.kv_bytes == ref.kv_bytes
    if budget is not None:
        assert (got.evicted_at_step >= 0).any(), "the budget evicted nothing: the test would prove nothing"
    assert ref.device == "cuda:0" and ref.device_memory == {}
    assert got.device == "cuda:0 + cuda:1"
    mem = got.device_memory
    assert [mem["cuda:0"]["layers"], mem["cuda:1"]["layers"]] == [[0, 1], [2, 3]]
    assert mem["cuda:0"]["kv_bytes"] + mem["cuda:1"]["kv_bytes"] == got.kv_bytes[-1]  # the cache after the last record


def test_full_cache_split_equals_generate(pair, ids):
    one, split = pair
    got = engine.run(split, IdTokenizer(), ids, "full", max_new_tokens=24)  # both stop at the config's EOS, if it comes
    expected = one.generate(torch.tensor([ids], device=CUDA0), max_new_tokens=24, do_sample=False)
    assert got.generated_ids == expected[0, len(ids):].tolist()
    # the full cache at the end holds prompt + generated - 1 tokens (the last token is never fed):
    # per layer 2 (K, V) x 2 KV heads x tokens x 16 dims x 4 bytes, two layers per GPU
    per_layer = 2 * 2 * (len(ids) + got.n_steps - 1) * 16 * 4
    assert got.device_memory["cuda:0"]["kv_bytes"] == got.device_memory["cuda:1"]["kv_bytes"] == 2 * per_layer
    # weights, fp32: a layer is q, o (128 x 128), k, v (128 x 32), the MLP (3 x 128 x 256) and two
    # norms (128); the embeddings and the LM head 512 x 128; RoPE's buffers (8 frequencies each)
    layer = (2 * 128 * 128 + 2 * 128 * 32 + 3 * 128 * 256 + 2 * 128) * 4
    table = 512 * 128 * 4
    rope = sum(b.numel() * b.element_size() for b in split.model.rotary_emb.buffers())
    assert rope in (8 * 4, 2 * 8 * 4)  # inv_freq, and original_inv_freq where it is a buffer of its own
    assert got.device_memory["cuda:0"]["weights_bytes"] == table + 2 * layer + rope
    assert got.device_memory["cuda:1"]["weights_bytes"] == 2 * layer + 128 * 4 + table
    assert all(m["allocated_bytes"] >= m["weights_bytes"] + m["kv_bytes"] for m in got.device_memory.values())


def test_each_layer_cache_and_records_live_on_the_layer_gpu(pair, ids):
    _, split = pair
    cache = PolicyCache(PolicySpec.of("h2o", budget=24).pipeline(), LAYERS, len(ids), len(ids) + 4, 2, devices.layer_devices(split))
    before = torch.cuda.memory_allocated(CUDA1)
    with cache.attached(split), torch.inference_mode():
        engine.prefill(split, cache, ids)
    for layer, device in zip(cache.layers, [CUDA0, CUDA0, CUDA1, CUDA1]):
        assert layer.positions.device == device
        assert {t.device for t in layer.store.tensors()} == {device}
        assert len(layer) == 24
    assert [r.device for r in cache.records] == [CUDA0, CUDA1]
    assert cache.kv_bytes_by_device() == {"cuda:0": 2 * 2 * 2 * 24 * 16 * 4, "cuda:1": 2 * 2 * 2 * 24 * 16 * 4}
    assert torch.cuda.memory_allocated(CUDA1) - before >= cache.kv_bytes_by_device()["cuda:1"]
    # gathered from both GPUs: the prefill evicted all but 24 of the prompt, per layer and KV head
    assert cache.evicted_at.device.type == "cpu"
    assert int((cache.evicted_at[:, :, : len(ids)] == 0).sum()) == LAYERS * 2 * (len(ids) - 24)


def test_the_embedded_model_with_device_map_auto():
    from kvviz.model.loading import load_model
    from kvviz.record.text import encode_prompt

    loaded = load_model(GPU_MODEL, device_map="auto")  # the host's staged SmolLM2, as the other GPU tests
    m, tok = loaded.model, loaded.tokenizer
    text = "Tell me about the history of lighthouses, their keepers and the lenses they used. " * 4
    prompt = encode_prompt(tok, text, chat=True)
    trace = engine.run(m, tok, prompt, "full", max_new_tokens=16)
    ref = m.generate(torch.tensor([prompt], device=devices.input_device(m)), max_new_tokens=16, do_sample=False)
    assert trace.generated_ids == ref[0, len(prompt):].tolist()
    placement = devices.layer_devices(m)
    if devices.is_split(placement):  # accelerate balanced the 135M model over the GPUs
        assert loaded.summary.split and loaded.summary.device == devices.describe(placement)
        assert sum(loaded.summary.weights_by_device.values()) == sum(devices.weights_by_device(m).values())
        h2o = engine.run(m, tok, prompt, "h2o", budget=32, max_new_tokens=8)
        assert set(h2o.device_memory) >= {str(d) for d in placement}
