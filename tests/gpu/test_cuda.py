"""On a CUDA host (marked gpu, skipped elsewhere): kvviz runs on the GPU, and decode steps
replayed from a CUDA graph give exactly what the eager steps give, for every registered policy
and the compositions: a selector that evicts at decode once it holds its budget, a growing cache
once it is held at a fixed capacity (compared with eager steps over the same layout, and, in
float32, with the growing layout and transformers' generate)."""

import numpy as np
import pytest
import torch

from kvviz.runtime import engine
from kvviz.policies import get, registry, takes_budget
from kvviz.policies.selector import Retriever
from kvviz.record.text import encode_prompt

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def ids(gpu_model):
    text = "Tell me about the history of lighthouses, their keepers and the lenses they used. " * 6
    return encode_prompt(gpu_model.tokenizer, text, chat=True)


def test_full_matches_generate_on_cuda(gpu_model, ids):
    """bf16, eager growing cache: the same kernels as generate (the graph replays a masked
    fixed-capacity attention, compared with generate in float32 below)."""
    m, tok = gpu_model.model, gpu_model.tokenizer
    trace = engine.run(m, tok, ids, "full", max_new_tokens=32, cuda_graphs=False)
    ref = m.generate(torch.tensor([ids], device="cuda"), max_new_tokens=32, do_sample=False)
    assert trace.device.startswith("cuda")
    assert trace.generated_ids == ref[0, len(ids):].tolist()


COMPOSITIONS = ["snapkv+quant", "snapkv+kivi", "pyramidkv+lowrank", "h2o+quant", "h2o+kivi", "tova+lowrank", "merge+quant", "streaming_llm+quant"]
SPECS = [*registry(), *COMPOSITIONS, "quant:axis=per_channel"]
# what still decodes eagerly: nothing (retrievers replay their read set in static shapes since
# Retriever.read_fixed; tests/gpu/test_retrieval_graphs.py checks their read sets)
EAGER = {n for n in registry() if issubclass(get(n), Retriever) and not get(n).graph_safe}


def spec_kw(spec):
    name, _, param = spec.partition(":")
    return name, dict(params=dict([param.split("=")]) if param else None, budget=48 if takes_budget(name) else None)


@pytest.mark.parametrize("spec", SPECS)
def test_graph_replay_equals_eager_steps(gpu_model, ids, spec):
    m, tok = gpu_model.model, gpu_model.tokenizer
    name, kw = spec_kw(spec)
    kw.update(max_new_tokens=40, stop_at_eos=False)
    graphed = engine.run(m, tok, ids, name, cuda_graphs=True, **kw)
    assert graphed.timings["decode_path"] == ("eager" if spec in EAGER else "graph")
    # eager steps over the same layout (a growing cache held at the same fixed capacity)
    eager = engine.run(m, tok, ids, name, cuda_graphs=False, fixed_capacity=graphed.extra["fixed_capacity"], **kw)
    assert eager.timings["decode_path"] == "eager"
    assert graphed.generated_ids == eager.generated_ids
    np.testing.assert_array_equal(graphed.evicted_at_step, eager.evicted_at_step)
    # scores to float32 rounding: merge adds merged entries with scatter-add, whose atomic adds on
    # CUDA sum in no fixed order (measured on an H100: at most 1e-6 apart, tokens and evictions equal)
    np.testing.assert_allclose(graphed.scores, eager.scores, rtol=1e-5, atol=1e-6)
    assert graphed.kv_bytes == eager.kv_bytes
    assert graphed.bookkeeping_bytes == eager.bookkeeping_bytes
    assert graphed.store_error == eager.store_error


@pytest.mark.parametrize("spec", ["full", "snapkv", "pyramidkv", "lowrank", "head_share", "pyramidkv+lowrank"])
def test_graph_replay_of_a_fixed_capacity_cache_equals_the_growing_cache_in_float32(gpu_model_fp32, spec):
    m, tok = gpu_model_fp32.model, gpu_model_fp32.tokenizer
    prompt = encode_prompt(tok, "Tell me about the history of lighthouses, their keepers and the lenses they used. " * 6, chat=True)
    name, kw = spec_kw(spec)
    kw.update(max_new_tokens=40, stop_at_eos=False)
    graphed = engine.run(m, tok, prompt, name, cuda_graphs=True, **kw)
    growing = engine.run(m, tok, prompt, name, cuda_graphs=False, fixed_capacity=False, **kw)
    assert graphed.timings["decode_path"] == "graph" and graphed.extra["fixed_capacity"]
    assert not growing.extra["fixed_capacity"]
    assert graphed.generated_ids == growing.generated_ids
    np.testing.assert_array_equal(graphed.evicted_at_step, growing.evicted_at_step)
    assert graphed.kv_bytes == growing.kv_bytes
    if spec == "full":
        ref = m.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=40, min_new_tokens=40, do_sample=False)
        assert graphed.generated_ids == ref[0, len(prompt):].tolist()
