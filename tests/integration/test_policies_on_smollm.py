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


def test_h2o_takes_any_split_of_recent_and_heavy_hitters(smollm):
    """budget 64, recent 48 (more than half, as the authors' code allows): after prefill each KV
    head keeps the 48 newest prompt tokens and the 16 others with the most attention received,
    recomputed in float64 from the model's own queries and keys (mean over the KV head's query
    heads, summed over every prompt query); each decode step keeps the 48 newest tokens."""
    import torch
    from tests.references import grouped_softmax, projections

    from kvviz.record.examples import long_document

    budget, recent, steps = 64, 48, 3
    ids = encode_prompt(smollm.tokenizer, long_document()[:1200])[:150]
    P = len(ids)
    assert P == 150
    trace = engine.run(smollm.model, smollm.tokenizer, ids, "h2o", params={"recent": recent}, budget=budget,
                       max_new_tokens=steps, stop_at_eos=False)
    assert trace.protection.recent == recent
    queries, keys = projections(smollm.model, ids)  # (layers, 9, P, 64), (layers, 3, P, 64), float64
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    near_ties = 0
    for layer in range(smollm.summary.n_layers):
        received = grouped_softmax(queries[layer], keys[layer], causal).mean(1).sum(1)  # (3, P)
        for head in range(smollm.summary.n_kv_heads):
            older = received[head, : P - recent]
            order = older.argsort(descending=True)
            cut, below = older[order[budget - recent - 1]], older[order[budget - recent]]
            if cut - below <= 1e-6 * cut:  # float32 in the run could flip such a pair
                near_ties += 1
                continue
            expected = sorted(order[: budget - recent].tolist()) + list(range(P - recent, P))
            assert trace.kept_positions(0, layer, head).tolist() == expected, (layer, head)
            for s in range(1, steps):
                held = trace.kept_positions(s, layer, head).tolist()
                assert len(held) == budget and set(range(P + s - recent, P + s)) <= set(held)
    assert near_ties <= 3  # nearly every (layer, KV head) is checked
