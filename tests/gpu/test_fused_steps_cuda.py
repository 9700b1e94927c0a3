"""On a CUDA host (marked gpu, skipped elsewhere): a policy's steady decode steps compiled by
torch.compile (``kvviz.runtime.fused_steps``) and replayed from a CUDA graph give, in float32, the
tokens, evictions, read sets and log-probs of the same run with the policy's own eager kernels,
and launch fewer kernels."""

import numpy as np
import pytest
import torch

from kvviz.record.text import encode_prompt
from kvviz.runtime import engine, fused

pytestmark = pytest.mark.gpu

TEXT = "Tell me about the history of lighthouses, their keepers and the lenses they used. " * 12
SPECS = ["h2o:budget=96", "streaming_llm:budget=96", "tova:budget=96", "lru:budget=96",
         "window:budget=96", "kivi", "quant", "quest:read_budget=64", "sparq:read_budget=64", "full"]
# float32 reassociation: knorm's key norms sum in another order (near-equal norms rank the other
# way), and a value on a quantization boundary rounds the other way in a quantizing composition
NEAR = ["knorm:budget=96", "h2o+quant:budget=96"]


def run(loaded, spec, **kw):
    ids = encode_prompt(loaded.tokenizer, TEXT, chat=True)
    return engine.run(loaded.model, loaded.tokenizer, ids, spec, max_new_tokens=48, stop_at_eos=False, keep_logprobs=True, **kw)


@pytest.mark.parametrize("spec", SPECS)
def test_fused_policy_steps_give_the_eager_steps_results_in_float32(gpu_model_fp32, spec):
    first = run(gpu_model_fp32, spec, fused=True)  # asks for the blocks and this policy's step at these shapes
    fused.wait()
    plain = run(gpu_model_fp32, spec, fused=False)
    fast = run(gpu_model_fp32, spec, fused=True)
    assert first.generated_ids == plain.generated_ids
    assert plain.timings["fused_steps"] == "off"
    assert fast.timings["fused_steps"] == "all" and fast.timings["decode_path"] == "graph", fast.timings
    assert fast.generated_ids == plain.generated_ids
    np.testing.assert_array_equal(fast.evicted_at_step, plain.evicted_at_step)
    if plain.read_mask is not None:
        np.testing.assert_array_equal(fast.read_mask, plain.read_mask)
    torch.testing.assert_close(fast.extra["logprobs"], plain.extra["logprobs"], rtol=0, atol=1e-3)


@pytest.mark.parametrize("spec", NEAR)
def test_fused_policy_steps_stay_within_float32_reassociation(gpu_model_fp32, spec):
    run(gpu_model_fp32, spec, fused=True)
    fused.wait()
    plain = run(gpu_model_fp32, spec, fused=False)
    fast = run(gpu_model_fp32, spec, fused=True)
    assert fast.timings["fused_steps"] == "all", fast.timings
    assert fast.generated_ids[:16] == plain.generated_ids[:16]
    assert (fast.evicted_at_step == plain.evicted_at_step).mean() > 0.98
    # the runs agree until a step evicts another entry; the entries that step swapped scored the
    # same to float32 rounding (a near-tie); past it the layers hold other entries and may part
    differ = fast.evicted_at_step != plain.evicted_at_step
    steps = np.concatenate([fast.evicted_at_step[differ], plain.evicted_at_step[differ]])
    first = int(steps[steps >= 0].min()) if differ.any() else len(plain.generated_ids)
    upto = min(first + 1, 16)  # the logits of the step that evicted otherwise were read before it
    torch.testing.assert_close(fast.extra["logprobs"][:upto], plain.extra["logprobs"][:upto], rtol=0, atol=0.1)
    swapped = differ & ((fast.evicted_at_step == first) | (plain.evicted_at_step == first))
    for layer, head in {(int(li), int(h)) for li, h, _ in np.argwhere(swapped)}:
        scores = plain.scores[layer, head][swapped[layer, head]]
        np.testing.assert_allclose(scores, scores[0], rtol=1e-5)


def test_fused_policy_steps_launch_fewer_kernels(gpu_model, monkeypatch):
    """Both runs fuse the model's blocks; one fuses H2O's steps too."""
    from torch.profiler import ProfilerActivity, profile

    def kernels(steps):
        monkeypatch.setenv("KVVIZ_FUSED_STEPS", "1" if steps else "0")
        run(gpu_model, "h2o:budget=96", fused=True)
        fused.wait()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            trace = run(gpu_model, "h2o:budget=96", fused=True)
        torch.cuda.synchronize()
        return sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events()), trace

    (plain, before), (fast, trace) = kernels(False), kernels(True)
    assert before.timings["fused_steps"] == "off" and before.timings["fused"] == "all"
    assert trace.timings["fused_steps"] == "all"
    # H2O's eager step: ~45 kernels per layer beyond the full cache's; fused, a handful
    assert fast < plain - 47 * 30 * 20, (plain, fast)
