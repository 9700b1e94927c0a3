"""On a CUDA host (marked gpu, skipped elsewhere): decode steps with the model's pure blocks fused
by torch.compile (``kvviz.runtime.fused``), replayed from a CUDA graph, give the tokens of the same
steps with the model's own eager blocks in float32, stay within bf16 rounding of them in bf16, and
launch fewer kernels."""

import numpy as np
import pytest
import torch

from kvviz.record.text import encode_prompt
from kvviz.runtime import engine, fused

pytestmark = pytest.mark.gpu

TEXT = "Tell me about the history of lighthouses, their keepers and the lenses they used. " * 12
SPECS = ["full", "snapkv:budget=96", "h2o:budget=96", "streaming_llm:budget=96", "kivi", "quest:read_budget=64"]


def run(loaded, spec, **kw):
    ids = encode_prompt(loaded.tokenizer, TEXT, chat=True)
    return engine.run(loaded.model, loaded.tokenizer, ids, spec, max_new_tokens=48, stop_at_eos=False, keep_logprobs=True, **kw)


def build(loaded):
    first = run(loaded, "h2o:budget=96", fused=True)  # asks for every block the decode step calls
    assert first.timings["fused"] in ("building", "some", "all")
    fused.wait()
    assert fused.blocks_of(loaded.model).state() == "ready"
    return loaded


@pytest.fixture(scope="module")
def built(gpu_model):
    return build(gpu_model)


@pytest.fixture(scope="module")
def built_fp32(gpu_model_fp32):
    return build(gpu_model_fp32)


@pytest.mark.parametrize("spec", SPECS)
def test_fused_graph_replay_gives_the_eager_blocks_tokens_in_float32(built_fp32, spec):
    plain = run(built_fp32, spec, fused=False)
    fast = run(built_fp32, spec, fused=True)
    assert fast.timings["fused"] == "all" and fast.timings["decode_path"] == "graph", fast.timings
    assert plain.timings["fused"] == "off"
    assert fast.generated_ids == plain.generated_ids
    np.testing.assert_array_equal(fast.evicted_at_step, plain.evicted_at_step)
    torch.testing.assert_close(fast.extra["logprobs"], plain.extra["logprobs"], rtol=0, atol=1e-3)


@pytest.mark.parametrize("spec", ["full", "h2o:budget=96"])
def test_fused_bf16_steps_stay_within_rounding_of_eager_blocks(built, spec):
    """In bf16 the fused norms sum in another order and round once where eager rounds twice: the
    first step's log-probs (the same cache) agree to bf16 rounding; later greedy near-ties may go
    the other way, as they do between transformers' own static and dynamic caches."""
    plain = run(built, spec, fused=False)
    fast = run(built, spec, fused=True)
    assert fast.timings["fused"] == "all"
    assert fast.generated_ids[:4] == plain.generated_ids[:4]
    torch.testing.assert_close(fast.extra["logprobs"][1], plain.extra["logprobs"][1], rtol=0, atol=0.25)


def test_fused_blocks_launch_fewer_kernels(built):
    from torch.profiler import ProfilerActivity, profile

    def kernels(use_fused):
        run(built, "full", fused=use_fused)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run(built, "full", fused=use_fused)
        torch.cuda.synchronize()
        return sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events())

    plain, fast = kernels(False), kernels(True)
    # an RMSNorm alone is 8 elementwise kernels eagerly and one fused: 2 per layer, 30 layers, 47 steps
    assert fast < plain - 47 * 30 * 2 * 5, (plain, fast)
