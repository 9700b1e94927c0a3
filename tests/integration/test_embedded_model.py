"""The embedded SmolLM2 on the CPU: it loads, it answers, and its numbers are the known ones."""

import torch

from kvviz.record import examples as data
from kvviz.record.text import encode_prompt


def test_smollm_answers_the_capital_of_france(smollm):
    ids = encode_prompt(smollm.tokenizer, "What is the capital of France?", chat=True)
    with torch.no_grad():
        out = smollm.model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
    answer = smollm.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert "Paris" in answer


def test_smollm_summary(smollm):
    s = smollm.summary
    assert (s.n_layers, s.n_q_heads, s.n_kv_heads, s.head_dim) == (30, 9, 3, 64)
    assert s.attention == "GQA (9 query heads share 3 KV heads)"
    assert (s.dtype, s.device, s.max_context) == ("float32", "cpu", 8192)
    assert s.kv_bytes_per_token == 2 * 30 * 3 * 64 * 4 == 46080
    assert 134_000_000 < s.n_params < 135_000_000
    assert s.source.startswith("embedded GGUF")
    assert not smollm.model.training
    assert smollm.model.config._attn_implementation == "sdpa"


def test_long_document_is_over_3000_tokens(smollm):
    assert len(encode_prompt(smollm.tokenizer, data.long_document())) >= 3000


def test_passkey_filler_length_is_calibrated_in_tokens(smollm):
    overhead = len(encode_prompt(smollm.tokenizer, data.passkey_prompt(0, 0.5)[0]))
    for asked in (500, 2000, 6000):
        n = len(encode_prompt(smollm.tokenizer, data.passkey_prompt(asked, 0.5)[0])) - overhead
        assert abs(n - asked) <= 0.05 * asked, (asked, n)


def test_smollm_retrieves_a_pass_key_from_the_full_cache(smollm):
    text, key = data.passkey_prompt(400, 0.3, seed=3)
    ids = encode_prompt(smollm.tokenizer, text, chat=True)
    with torch.no_grad():
        out = smollm.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert key in smollm.tokenizer.decode(out[0, len(ids):])
