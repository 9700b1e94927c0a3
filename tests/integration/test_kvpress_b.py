"""expected_attention, chunkkv and adakv against kvpress's ExpectedAttentionPress, ChunkKVPress
and AdaKVPress, re-implemented from kvpress's code in tests/kvpress_rules_b.py, on the embedded
SmolLM2 (float32, ratio 0.25): kept entries after the prefill, per layer and KV head."""

from __future__ import annotations

import pytest
from tests.kvpress_rules_b import (
    adakv_keep,
    chunkkv_keep,
    expected_attention_scores,
    knorm_scores,
    layer_inputs,
    scorer_keep,
)

from kvviz.policies import PolicyError, build
from kvviz.policies.params import ratio_budget
from kvviz.record.text import encode_prompt
from kvviz.runtime import engine

TEXT = (
    "The lighthouse keeper climbed the stairs every evening to light the lamp. One night he found a bottle "
    "on the rocks, and inside it was a letter written in a careful hand. It asked whoever found it to walk "
    "to the old mill at dawn and wait by the river. He folded the letter, put it in his coat, and watched "
    "the sea until the light came. At dawn he went down the hill, past the sleeping village, to the mill."
)
LAYERS, KV, RATIO = 30, 3, 0.25


@pytest.fixture(scope="module")
def ids(smollm):
    ids = encode_prompt(smollm.tokenizer, TEXT + " " + TEXT)
    assert 150 <= len(ids) <= 250
    return ids


@pytest.fixture(scope="module")
def inputs(smollm, ids):
    return layer_inputs(smollm.model, ids)


@pytest.fixture(scope="module")
def ea_scores(smollm, inputs):
    """ExpectedAttentionPress's scores of every layer, defaults (512 future positions, 4 sinks)."""
    rotary = smollm.model.model.rotary_emb
    return [expected_attention_scores(h, wq, k, v, rotary) for h, wq, k, v in inputs]


def run(smollm, ids, spec, **params):
    return engine.run(smollm.model, smollm.tokenizer, ids, spec, max_new_tokens=1, stop_at_eos=False,
                      ratio=RATIO, params=params)


def shared(trace, expected):
    """(kept entries both agree on, entries the reference keeps) over every layer and KV head."""
    same = total = 0
    for layer in range(LAYERS):
        for h in range(KV):
            got, want = set(trace.kept_positions(0, layer, h).tolist()), set(expected[layer][h])
            same, total = same + len(got & want), total + len(want)
    return same, total


def test_expected_attention_keeps_what_the_press_keeps(smollm, ids, ea_scores):
    budget = ratio_budget(RATIO, len(ids))
    trace = run(smollm, ids, "expected_attention")
    same, total = shared(trace, [scorer_keep(s, budget) for s in ea_scores])
    assert (same, total) == (LAYERS * KV * budget,) * 2


@pytest.mark.parametrize("scorer", ["knorm", "expected_attention"])
def test_chunkkv_keeps_the_chunks_the_press_keeps(smollm, ids, inputs, ea_scores, scorer):
    n, chunk = len(ids), 20
    budget = ratio_budget(RATIO, n)
    chunks = -(-n // chunk)
    n_chunks = max(1, int(chunks * (1 - (1 - RATIO))))  # the press's rule at compression_ratio 0.75
    scores = [knorm_scores(k) for _, _, k, _ in inputs] if scorer == "knorm" else ea_scores
    expected = [[chunkkv_keep(s, chunk, n_chunks)] * KV for s in scores]
    trace = run(smollm, ids, "chunkkv", scorer=scorer, chunk_length=chunk)
    same, total = shared(trace, expected)
    assert total <= LAYERS * KV * n_chunks * chunk <= LAYERS * KV * budget  # whole chunks, within the budget
    assert same == total
    assert len(trace.kept_positions(0, 0, 0)) % chunk in (0, len(ids) % chunk)


def test_adakv_keeps_what_the_press_keeps(smollm, ids, ea_scores):
    budget = ratio_budget(RATIO, len(ids))
    pipeline = build("adakv", {"scorer": "expected_attention", "alpha_safeguard": 0.2}, ratio=RATIO)
    trace = engine.run(smollm.model, smollm.tokenizer, ids, pipeline, max_new_tokens=1, stop_at_eos=False)
    same = total = extra = 0
    for layer in range(LAYERS):
        want = adakv_keep(ea_scores[layer], budget, 0.2)
        assert sum(map(len, want)) == KV * budget
        held = max(map(len, want))
        assert pipeline.selector.head_budgets[layer] == [len(w) for w in want]
        for h in range(KV):
            got = set(trace.kept_positions(0, layer, h).tolist())
            assert len(got) == held  # rectangular: every head holds the largest head budget
            same, total, extra = same + len(got & set(want[h])), total + len(want[h]), extra + len(got - set(want[h]))
    held_entries = sum(len(trace.kept_positions(0, layer, h)) for layer in range(LAYERS) for h in range(KV))
    assert trace.kv_bytes[0] == held_entries * 2 * 64 * 4  # float32 keys and values: what is held, fillers too
    assert same == total and extra == 2289  # the adaptive sets all held, plus 2,289 fillers (55% more)
    print(f"adakv: {same} of {total} shared; {extra} filler entries held")


def test_inner_scorer_is_a_registered_scored_selector(smollm, ids):
    with pytest.raises(PolicyError, match="scorer"):
        build("chunkkv", {"scorer": "quant"})
    with pytest.raises(PolicyError, match="scorer"):
        build("adakv", {"scorer": "chunkkv"})
    trace = run(smollm, ids, "chunkkv", scorer="snapkv")  # the default inner scorer, with its window
    kept = trace.kept_positions(0, 5, 0).tolist()
    assert all(kept == trace.kept_positions(0, 5, h).tolist() for h in range(KV))  # the same chunks in every head
    assert len(kept) <= ratio_budget(RATIO, len(ids)) and trace.kv_bytes[0] < trace.kv_bytes_full[0]
