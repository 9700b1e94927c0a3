"""The paged cache's mechanics on tiny random Llamas (SDPA and eager attention): the batch mask
by hand, and outputs equal to the contiguous cache of kvviz's engine."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kvviz.runtime import engine
from kvviz.paged.paged_cache import KVPool, PagedCache, Row
from kvviz.paged.engine import PagedEngine
from kvviz.paged.scheduler import Request


class Tok:
    eos_token_id = None

    def decode(self, ids):
        return " ".join(map(str, ids))


def tiny(attn: str):
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, attn_implementation=attn,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_the_batch_mask_by_hand():
    pool = KVPool(n_layers=1, num_blocks=4, block_size=2, kv_heads=1, head_dim=4, dtype=torch.float32, device="cpu")
    cache = PagedCache(pool, n_layers=1)
    cache.add("a", [])  # a new prompt of two tokens
    cache.add("b", [0, 1, 2])  # three tokens held, decodes one
    ids, pos, mask = cache.begin([Row("a", [5, 6], [4, 5], 0), Row("b", [7], [3], 3)], mask_dtype=None)
    assert ids.tolist() == [[5, 6], [0, 7]] and pos.tolist() == [[0, 1], [0, 3]]  # left-padded queries
    assert mask.shape == (2, 1, 2, 4)
    assert mask[0, 0].tolist() == [[True, False, False, False], [True, True, False, False]]  # causal
    assert mask[1, 0].tolist() == [[True, False, False, False], [True, True, True, True]]  # padding row sees one
    assert cache.gather_index(0).tolist() == [4, 5, 0, 0, 0, 1, 2, 3]  # a's slots padded, b's slots
    assert cache.write_from.tolist() == [0, 1, 3] and cache.write_to.tolist() == [4, 5, 3]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_paged_equals_contiguous_on_a_tiny_llama(attn):
    model = tiny(attn)
    shared = [(5 * i + 1) % 120 + 1 for i in range(13)]
    prompts = [shared + [3, 9], shared + [4], [(11 * i) % 120 + 2 for i in range(7)]]
    s = PagedEngine(model, Tok(), num_blocks=20, block_size=4, stop_at_eos=False)
    for i, p in enumerate(prompts):
        s.submit(Request(f"r{i}", p, 6))
    s.run()
    assert s.requests[1].prefix_hit_blocks == 3
    for r in s.requests:
        ref = engine.run(model, Tok(), r.prompt_ids, "full", max_new_tokens=6, stop_at_eos=False)
        assert r.generated == ref.generated_ids, r.rid


def test_block_eviction_keeps_whole_blocks_and_decodes_from_them():
    """streaming_llm (4 sinks, budget 8) in block mode on 14 prompt tokens, blocks of 4: the
    selector keeps positions 0-3 and 10-13, so block 0 scores 1, block 1 scores 0, block 2
    (8-11) 0.5, and the block being written (12-13) stays: with ceil(8 / 4) = 2 blocks, blocks
    1 and 2 go. The next token must then be what a masked forward that hides 4-11 predicts."""
    from kvviz import policies

    model = tiny("sdpa")
    prompt = [(5 * i + 1) % 120 + 1 for i in range(14)]
    s = PagedEngine(model, Tok(), num_blocks=8, block_size=4, stop_at_eos=False,
                  pipeline=policies.build("streaming_llm", {"n_sink": 4}, budget=8), eviction="block")
    s.submit(Request("r0", prompt, 2))
    s.run()
    table = s.frames[1]["pool"]["tables"]["r0"]
    assert [b is not None for b in table] == [True, False, False, True]
    assert [e.detail["logical"] for e in s.manager.events if e.kind == "drop"] == [1, 2]
    assert s.frames[1]["held_tokens"] == 6 and s.frames[1]["reserved_slots"] == 8
    ids = torch.tensor([prompt + s.requests[0].generated[:1]])
    sees = torch.ones(15, 15).tril().bool()
    sees[14, 4:12] = False  # the last query reads 0-3, 12-14
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=sees[None, None]).logits[0]
    assert s.requests[0].generated == [int(logits[13].argmax()), int(logits[14].argmax())]


@pytest.mark.parametrize("spec, message", [
    ("merge", "merges entries"),
    ("quant", "no store"),
    ("pyramidkv", "one budget for every layer"),
])
def test_policies_the_paged_cache_cannot_hold_are_refused(spec, message):
    from kvviz import policies
    from kvviz.policies import PolicyError

    model = tiny("sdpa")
    with pytest.raises(PolicyError, match=message):
        s = PagedEngine(model, Tok(), num_blocks=16, block_size=4, stop_at_eos=False,
                      pipeline=policies.build(spec, {}, budget=8) if spec != "quant" else policies.build(spec))
        s.submit(Request("r0", [(3 * i) % 120 + 1 for i in range(20)], 3))
        s.run()
