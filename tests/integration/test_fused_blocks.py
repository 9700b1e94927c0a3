"""Decoding with the model's pure blocks fused by torch.compile (``kvviz.runtime.fused``), on the
CPU in float32 (inductor's C++ backend; on CUDA the same blocks become Triton kernels, see
``tests/gpu/test_fused_blocks_cuda.py``): a run never waits for the compiler, the fused steps give the
eager blocks' tokens and evictions, and nothing stays on the shared model."""

import threading

import numpy as np
import pytest
import torch
import transformers.models.llama.modeling_llama as modeling_llama

from kvviz.record.text import encode_prompt
from kvviz.runtime import engine, fused

NEW = 10


@pytest.fixture(scope="module")
def ids(smollm):
    return encode_prompt(smollm.tokenizer, "Why do lighthouses have lenses?", chat=True)


def run(smollm, ids, spec, **kw):
    return engine.run(smollm.model, smollm.tokenizer, ids, spec, max_new_tokens=NEW, stop_at_eos=False, keep_logprobs=True, **kw)


@pytest.fixture(scope="module")
def built(smollm, ids):
    """The first fused run decodes eagerly and asks for the blocks; they are built in the background."""
    first = run(smollm, ids, "h2o:budget=16", fused=True)
    assert first.timings["fused"] in ("building", "some")  # not waited for
    fused.wait()
    assert fused.blocks_of(smollm.model).state() == "ready"
    return first


@pytest.mark.parametrize("spec", ["full", "h2o:budget=16", "snapkv:budget=16", "kivi"])
def test_fused_steps_give_the_eager_blocks_tokens(smollm, ids, built, spec):
    plain = run(smollm, ids, spec, fused=False)
    fast = run(smollm, ids, spec, fused=True)
    assert plain.timings["fused"] == "off" and fast.timings["fused"] == "all"
    assert fast.generated_ids == plain.generated_ids
    np.testing.assert_array_equal(fast.evicted_at_step, plain.evicted_at_step)
    torch.testing.assert_close(fast.extra["logprobs"], plain.extra["logprobs"], rtol=0, atol=1e-4)


def test_the_first_run_was_not_slowed_into_a_different_result(smollm, ids, built):
    """The run that asked for the build decoded with the model's own blocks: its tokens are the
    eager run's."""
    assert built.generated_ids == run(smollm, ids, "h2o:budget=16", fused=False).generated_ids


def test_nothing_stays_on_the_model_and_other_threads_keep_their_blocks(smollm, ids, built):
    """While one thread decodes fused, a forward on another thread calls the model's own blocks
    (no compiled call counted there); afterwards no module keeps a swapped forward and the modeling
    module's rotary function is transformers' own again."""
    own_rope = modeling_llama.apply_rotary_pos_emb
    norm = smollm.model.model.norm
    x = torch.randn(1, 1, norm.weight.shape[0])
    seen = {}

    def other_thread():
        fused._local.fused = fused._local.eager = 0
        seen["out"] = norm(x)
        seen["fused_calls"] = fused._local.fused

    with fused.decoding(smollm.model) as report:
        assert "forward" in vars(norm)  # the dispatcher is installed while a run decodes
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        here = norm(x)
    assert seen["fused_calls"] == 0
    assert report["fused"] == "all"  # this thread's call was fused
    torch.testing.assert_close(here, seen["out"], rtol=0, atol=1e-5)
    hand = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))  # RMSNorm by hand
    torch.testing.assert_close(here, hand, rtol=0, atol=1e-5)
    assert not any("forward" in vars(m) for m in smollm.model.modules())
    assert modeling_llama.apply_rotary_pos_emb is own_rope


def test_off_by_request_and_on_a_cpu_by_default(smollm, ids, built):
    assert run(smollm, ids, "full").timings["fused"] == "off"  # the default fuses on CUDA only
