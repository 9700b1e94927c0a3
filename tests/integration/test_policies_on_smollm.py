"""Known behaviour of policies on the embedded SmolLM2: passkey retrieval and quantized bytes."""

import pytest

from kvviz.runtime import engine
from kvviz.record.examples import passkey_prompt
from kvviz.record.text import encode_prompt


@pytest.fixture(scope="module")
def passkey(smollm):
    text, key = passkey_prompt(900, 0.1)  # the needle sits early, far outside a 25% window
    ids = encode_prompt(smollm.tokenizer, text, chat=True)
    assert 900 <= len(ids) <= 1100
    return ids, key


def test_full_cache_finds_the_passkey(smollm, passkey):
    ids, key = passkey
    trace = engine.run(smollm.model, smollm.tokenizer, ids, "full", max_new_tokens=10)
    assert key in trace.generated_text


def test_a_quarter_window_loses_the_passkey(smollm, passkey):
    ids, key = passkey
    trace = engine.run(smollm.model, smollm.tokenizer, ids, "window", ratio=0.25, max_new_tokens=10)
    text = "".join(trace.tokens[: len(ids)])
    offsets = [0]
    for t in trace.tokens[: len(ids)]:
        offsets.append(offsets[-1] + len(t))
    needle_pos = next(i for i, o in enumerate(offsets) if o > text.index(key)) - 1
    assert needle_pos < len(ids) - trace.budget  # the needle is outside the window...
    assert key not in trace.generated_text  # ...and the answer is lost


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantized_cache_bytes_match_the_bit_width(smollm, bits):
    ids = encode_prompt(smollm.tokenizer, "The lighthouse keeper wrote in the log every night. " * 8)
    trace = engine.run(
        smollm.model, smollm.tokenizer, ids, "quant", params={"bits": bits, "axis": "per_token", "group_size": 64},
        max_new_tokens=2,
    )
    n = len(ids)
    s = smollm.summary
    codes = 2 * s.n_layers * s.n_kv_heads * n * s.head_dim * bits // 8
    # one scale and one zero point (asymmetric) per token and group of 64 channels, in fp32
    scales = 2 * s.n_layers * s.n_kv_heads * n * 2 * 4
    assert trace.kv_bytes[0] == codes + scales
    assert trace.kv_bytes[0] < trace.kv_bytes_full[0] * (bits / 32 + 0.1)
