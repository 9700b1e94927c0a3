"""On a CUDA host (marked gpu, skipped elsewhere): a forced continuation read in chunks
(``kvviz.runtime.forced_chunks``) against the same run stepped from a CUDA graph. In float32 they
agree to rounding; in bf16 the larger products round otherwise, by far less than a policy moves
the output (H2O at the same budget, against the same stepped reference)."""

import numpy as np
import pytest
import torch

from kvviz.record.examples import long_document
from kvviz.runtime import engine

pytestmark = pytest.mark.gpu


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    p, q = p.double(), q.double()
    return float((p.exp() * (p - q)).nansum(-1).clamp_min(0).mean())


def runs(loaded, spec: str, chunks=(0, 256)):
    ids = loaded.tokenizer(long_document(), add_special_tokens=False)["input_ids"]
    prompt, forced = ids[:512], ids[512:640]
    return {c: engine.run(loaded.model, loaded.tokenizer, prompt, spec, forced_ids=forced, keep_logprobs=True, forced_chunk=c)
            for c in chunks}


@pytest.mark.parametrize("spec", ["full", "snapkv:ratio=0.2"])
def test_chunks_equal_graph_steps_in_float32(gpu_model_fp32, spec):
    got = runs(gpu_model_fp32, spec)
    stepped, chunked = got[0], got[256]
    assert stepped.timings["decode_path"] == "graph" and chunked.timings["decode_path"] == "chunked"
    assert chunked.kv_bytes == stepped.kv_bytes and chunked.kv_bytes_full == stepped.kv_bytes_full
    np.testing.assert_array_equal(chunked.evicted_at_step, stepped.evicted_at_step)
    assert float((chunked.extra["logprobs"] - stepped.extra["logprobs"]).abs().max()) < 1e-2
    assert kl(stepped.extra["logprobs"], chunked.extra["logprobs"]) < 1e-5


def test_in_bf16_chunks_move_the_output_far_less_than_a_policy(gpu_model):
    full = runs(gpu_model, "full")
    h2o = runs(gpu_model, "h2o:ratio=0.2", chunks=(256,))[256]  # steps: its selector evicts at decode
    assert h2o.timings["decode_path"] == "graph"
    reference = full[0].extra["logprobs"]
    rounding = kl(reference, full[256].extra["logprobs"])
    policy = kl(reference, h2o.extra["logprobs"])
    assert rounding < 0.05 * policy, (rounding, policy)
