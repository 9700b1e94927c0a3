"""On a CUDA host (marked gpu, skipped elsewhere): kvviz runs on the GPU, and decode steps
replayed from a CUDA graph give exactly what the eager steps give."""

import numpy as np
import pytest
import torch

from kvviz import engine
from kvviz.text import encode_prompt

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def ids(gpu_model):
    text = "Tell me about the history of lighthouses, their keepers and the lenses they used. " * 6
    return encode_prompt(gpu_model.tokenizer, text, chat=True)


def test_full_matches_generate_on_cuda(gpu_model, ids):
    m, tok = gpu_model.model, gpu_model.tokenizer
    trace = engine.run(m, tok, ids, "full", max_new_tokens=32)
    ref = m.generate(torch.tensor([ids], device="cuda"), max_new_tokens=32, do_sample=False)
    assert trace.device.startswith("cuda")
    assert trace.generated_ids == ref[0, len(ids):].tolist()


@pytest.mark.parametrize("policy", ["window", "streaming_llm", "h2o", "tova", "knorm", "lru", "lfu", "merge", "sparse_pattern"])
def test_graph_replay_equals_eager_steps(gpu_model, ids, policy):
    m, tok = gpu_model.model, gpu_model.tokenizer
    kw = dict(budget=48, max_new_tokens=40, stop_at_eos=False)
    eager = engine.run(m, tok, ids, policy, cuda_graphs=False, **kw)
    graphed = engine.run(m, tok, ids, policy, cuda_graphs=True, **kw)
    assert graphed.generated_ids == eager.generated_ids
    np.testing.assert_array_equal(graphed.evicted_at_step, eager.evicted_at_step)
    assert graphed.kv_bytes == eager.kv_bytes
