"""On a CUDA host (marked gpu, skipped elsewhere): requests decoded together from the paged pool
give, in float32, the same tokens as the contiguous cache (in bf16 batched attention rounds
differently; benchmarks/paged_bench.py reports how often the tokens still agree)."""

import pytest

from kvviz.runtime import engine
from kvviz.paged.engine import PagedEngine
from kvviz.paged.scheduler import Request
from kvviz.record.text import encode_prompt

pytestmark = pytest.mark.gpu

DOC = "Lighthouses were built on rocks and headlands to guide ships home at night. "
QUESTIONS = ["Who kept the lights?", "How far could the light be seen?", "Why were lenses used?"]


def test_paged_equals_contiguous_on_cuda(gpu_model_fp32):
    m, tok = gpu_model_fp32.model, gpu_model_fp32.tokenizer
    prompts = [encode_prompt(tok, DOC * 4 + q, chat=True) for q in QUESTIONS]
    s = PagedEngine(m, tok, num_blocks=64, block_size=16)
    for i, p in enumerate(prompts):
        s.submit(Request(f"r{i}", p, 24))
    s.run()
    assert sum(r.prefix_hit_blocks for r in s.requests) > 0
    for r in s.requests:
        assert r.generated == engine.run(m, tok, r.prompt_ids, "full", max_new_tokens=24).generated_ids, r.rid
