"""The paged cache on the embedded SmolLM2: several requests decoded together from the block pool
give, token for token, what the contiguous full cache gives (kvviz's engine, itself identical
to transformers' greedy generation); the pool holds the keys transformers computes."""

import torch
from transformers import DynamicCache

from kvviz.runtime import engine
from kvviz.paged.engine import PagedEngine
from kvviz.paged.scheduler import Request

DOC = "The museum opened in 1911 and holds paintings, maps and old clocks from the city."
PROMPTS = [DOC + " Question: when did it open?", DOC + " Question: what does it hold?", "Water boils at a temperature of"]


def ids(smollm, texts):
    return [smollm.tokenizer(t).input_ids for t in texts]


def contiguous(smollm, prompt_ids, n, **kw):
    return engine.run(smollm.model, smollm.tokenizer, prompt_ids, "full", max_new_tokens=n, **kw).generated_ids


def run(smollm, prompts, num_blocks, block_size, max_new_tokens, **kw):
    s = PagedEngine(smollm.model, smollm.tokenizer, num_blocks, block_size, **{k: v for k, v in kw.items() if k != "n"})
    for i, p in enumerate(prompts):
        s.submit(Request(f"r{i}", p, max_new_tokens, seed=10 * i, n=kw.get("n", 1)))
    s.run()
    return s


def test_requests_decoded_together_equal_the_contiguous_cache(smollm):
    prompts = ids(smollm, PROMPTS)
    s = run(smollm, prompts, num_blocks=32, block_size=8, max_new_tokens=6)
    for r in s.requests:
        assert r.generated == contiguous(smollm, r.prompt_ids, 6), r.rid
    # the three prompts ran in one forward, then decoded together; the second shares the document
    assert [e.request for e in s.manager.events if e.kind == "admit" and e.step == 1] == ["r0", "r1", "r2"]
    common = next(i for i, (a, b) in enumerate(zip(*prompts[:2])) if a != b)  # tokens the two prompts share
    assert s.requests[1].prefix_hit_blocks == common // 8 >= 2
    assert s.manager.used == 0 and not s.manager.tables  # every block returned


def test_the_pool_holds_the_keys_transformers_computes(smollm):
    prompt = ids(smollm, PROMPTS[:1])[0]
    s = run(smollm, [prompt], num_blocks=16, block_size=4, max_new_tokens=1)
    reference = DynamicCache(config=smollm.model.config)
    with torch.inference_mode():
        smollm.model(input_ids=torch.tensor([prompt]), **{engine.cache_keyword(smollm.model): reference})
    table = s.requests[0].block_table
    slots = torch.tensor([table[t // 4] * 4 + t % 4 for t in range(len(prompt))])
    for layer in (0, 29):
        k_flat, v_flat = s.pool.flat(layer)  # (slots, kv_heads, head_dim)
        ref = reference.layers[layer]
        torch.testing.assert_close(k_flat[slots].transpose(0, 1), ref.keys[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(v_flat[slots].transpose(0, 1), ref.values[0], atol=1e-4, rtol=1e-4)


def test_preemption_and_resume_give_the_same_output(smollm):
    prompts = ids(smollm, ["The capital of France is", "Water boils at a temperature of", "The largest planet in the solar system is"])
    s = run(smollm, prompts, num_blocks=6, block_size=4, max_new_tokens=8)
    assert sum(r.preemptions for r in s.requests) >= 1
    kinds = [e.kind for e in s.manager.events]
    assert "preempt" in kinds and "wait" in kinds
    for r in s.requests:
        assert r.generated == contiguous(smollm, r.prompt_ids, 8), r.rid
    assert s.manager.used == 0


def test_parallel_sampling_shares_the_prompt_and_copies_its_last_block(smollm):
    prompt = ids(smollm, ["The capital of France is"])[0]  # 5 tokens: one full block of 4, one partial
    s = run(smollm, [prompt], num_blocks=16, block_size=4, max_new_tokens=5, n=4, sample=True)
    assert [r.rid for r in s.requests] == ["r0", "r0.1", "r0.2", "r0.3"]
    assert {r.block_table[0] for r in s.requests} == {0}  # one physical prompt block for all four
    cows = [e for e in s.manager.events if e.kind == "cow"]
    assert len(cows) == 3 and {e.detail["src"] for e in cows} == {1} and {e.detail["logical"] for e in cows} == {1}
    for r in s.requests:  # each sample is what the contiguous cache samples with its seed
        assert r.generated == contiguous(smollm, prompt, 5, sample=True, seed=r.seed), r.rid
    assert len({tuple(r.generated) for r in s.requests}) > 1
