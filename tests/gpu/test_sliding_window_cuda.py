"""On a CUDA host (marked gpu, skipped elsewhere): a sliding-window model's compressed cache on the
GPU. The window is masked per KV head from the held positions (``policy_cache.window_mask``), so
such a run decodes eagerly, never from a CUDA graph (whose fixed-capacity buffers know no window),
and equals transformers' forward with the policy's and the window's masks, as on the CPU
(``tests/unit/test_model_families.py``)."""

import pytest
import torch

from tests.model_families import FAMILIES, build
from tests.unit.test_model_families import PROMPT, Tok, masked_forward_logprobs

from kvviz.runtime import engine

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", [n for n in FAMILIES if FAMILIES[n].runs and FAMILIES[n].args.get("sliding_window")])
def test_a_window_over_a_compressed_cache_on_cuda(name):
    model = build(name)
    if model is None:
        pytest.skip(f"this transformers has no {FAMILIES[name].config}")
    forced = [(5 * i + 1) % 100 + 3 for i in range(12)]
    ref = masked_forward_logprobs(model, PROMPT + forced[:-1], len(PROMPT), 5)
    model = model.to("cuda")
    trace = engine.run(model, Tok(), PROMPT, "window", budget=5, forced_ids=forced, keep_logprobs=True)
    assert trace.timings["decode_path"] == "eager"
    assert float((trace.extra["logprobs"].double().cpu() - ref).abs().max()) < 1e-4
    full = engine.run(model, Tok(), PROMPT, "full", max_new_tokens=12, stop_at_eos=False)
    assert full.timings["decode_path"] == "eager"
    with torch.inference_mode():
        generated = model.generate(torch.tensor([PROMPT], device="cuda"), max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert full.generated_ids == generated[0, len(PROMPT):].tolist()
