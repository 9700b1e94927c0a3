"""keydiff, observed_attention and lagkv against kvpress's KeyDiffPress, ObservedAttentionPress
and LagKVPress, re-implemented from kvpress's code in tests/kvpress_rules_a.py (float64), on the
embedded SmolLM2 (float32, ratio 0.25): kept entries after the prefill, per layer and KV head.

kvpress keeps int(n × (1 - compression_ratio)) entries (45 of this 182-token prompt); kvviz's one
rounding rule (``ratio_budget``) keeps 46. The references take kvviz's budget, so that the rule is
compared, not the rounding."""

from __future__ import annotations

import pytest
import torch
from tests.kvpress_rules_a import keydiff_scores, lagkv_scores, observed_attention_scores, topk_keep
from tests.references import projections

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
def kv(smollm, ids):
    """Every layer's cached keys (RoPE applied) and values after the prefill, as kvpress's hook
    sees them: (kv_heads, n, d), float32 promoted to float64."""
    from transformers import DynamicCache

    cache = DynamicCache(config=smollm.model.config)
    with torch.inference_mode():
        smollm.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
    return [(layer.keys[0].double(), layer.values[0].double()) for layer in cache.layers]


def run(smollm, ids, spec, **params):
    return engine.run(smollm.model, smollm.tokenizer, ids, spec, max_new_tokens=1, stop_at_eos=False,
                      ratio=RATIO, params=params)


def compare(trace, scores, budget):
    """(kept entries both agree on, entries the reference keeps, differences that are not ties
    at the reference's cut) over every layer and KV head; scores[layer] (kv_heads, n)."""
    same = total = untied = 0
    for layer in range(LAYERS):
        want_all = topk_keep(scores[layer], budget)
        for h in range(KV):
            got, want = set(trace.kept_positions(0, layer, h).tolist()), set(want_all[h])
            same, total = same + len(got & want), total + len(want)
            cut = min(float(scores[layer][h, j]) for j in want)
            untied += sum(abs(float(scores[layer][h, j]) - cut) > 1e-9 for j in got ^ want)
    return same, total, untied


def test_keydiff_keeps_what_keydiffpress_keeps(smollm, ids, kv):
    budget = ratio_budget(RATIO, len(ids))
    trace = run(smollm, ids, "keydiff")
    same, total, untied = compare(trace, [keydiff_scores(k) for k, _ in kv], budget)
    assert (same, total, untied) == (LAYERS * KV * budget,) * 2 + (0,)
    torch.testing.assert_close(torch.from_numpy(trace.scores[7][:, : len(ids)]).double(), keydiff_scores(kv[7][0]), atol=1e-5, rtol=1e-4)


def test_observed_attention_keeps_what_observedattentionpress_keeps(smollm, ids):
    budget = ratio_budget(RATIO, len(ids))
    q, k = projections(smollm.model, ids)
    scores = [observed_attention_scores(q[layer], k[layer]) for layer in range(LAYERS)]
    trace = run(smollm, ids, "observed_attention")
    same, total, untied = compare(trace, scores, budget)
    assert (same, total, untied) == (LAYERS * KV * budget,) * 2 + (0,)
    torch.testing.assert_close(torch.from_numpy(trace.scores[7][:, : len(ids)]).double(), scores[7], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("lag_size, measured", [(128, 4140), (19, 4140), (16, 3929)])
def test_lagkv_keeps_what_lagkvpress_keeps(smollm, ids, kv, lag_size, measured):
    """4 sinks. 128 (the default): the prompt is shorter than 4 + 2 × 128, not scored, the sinks
    and the newest kept. 19: 8 scored partitions, tail 26, 2 entries of each partition fill the
    budget of 46: every kept entry the same. 16: 10 scored partitions, tail 18, the 24 entries
    left are 2 of each partition and 4 of the 10 ranked third, a tie that top-k breaks its own
    way: 3,929 of 4,140 shared (94.90%), every difference a tie at the cut."""
    budget = ratio_budget(RATIO, len(ids))
    scores = [lagkv_scores(k, v, 4, lag_size) for k, v in kv]
    trace = run(smollm, ids, "lagkv", lag_size=lag_size)
    same, total, untied = compare(trace, scores, budget)
    assert (same, total, untied) == (measured, LAYERS * KV * budget, 0)
    torch.testing.assert_close(torch.from_numpy(trace.scores[7][:, : len(ids)]).double(), scores[7])
