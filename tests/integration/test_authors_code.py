"""SnapKV, PyramidKV and KIVI against rules re-implemented from their authors' released code
(tests/released.py, which cites repository, commit, file and lines), on the embedded SmolLM2.

Kept sets are compared per layer and KV head at the end of prefill; the share of kept entries
the two agree on is pinned at its measured value. KIVI's codes, scales and zero points are
compared element by element on the model's real keys and values, and its bytes by hand."""

from __future__ import annotations

import pytest
import torch
from tests.references import projections
from tests.released import KiviReleased, pyramidkv_released_capacities, snapkv_released

from kvviz.policies import registry
from kvviz.record.text import encode_prompt
from kvviz.runtime import engine
from kvviz.storage.quantize import unpack

TEXT = (
    "The lighthouse keeper climbed the stairs every evening to light the lamp. One night he found a bottle "
    "on the rocks, and inside it was a letter written in a careful hand. It asked whoever found it to walk "
    "to the old mill at dawn and wait by the river. He folded the letter, put it in his coat, and watched "
    "the sea until the light came. At dawn he went down the hill, past the sleeping village, to the mill."
)
LAYERS, KV, D = 30, 3, 64
BUDGET, WINDOW, KERNEL = 64, 32, 7


@pytest.fixture(scope="module")
def ids(smollm):
    ids = encode_prompt(smollm.tokenizer, TEXT + " " + TEXT)
    assert 100 <= len(ids) <= 200
    return ids


@pytest.fixture(scope="module")
def qk(smollm, ids):
    return projections(smollm.model, ids)


def run(smollm, ids, spec, steps=2, **kw):
    return engine.run(smollm.model, smollm.tokenizer, ids, spec, max_new_tokens=steps, stop_at_eos=False, **kw)


def compare(trace, qk, budgets, window, pooling):
    """(kept entries both agree on, all kept entries, entries where they differ that are not
    ties at the cut): over every layer and KV head."""
    same = total = untied = 0
    for layer, budget in enumerate(budgets):
        expected, pooled = snapkv_released(qk[0][layer], qk[1][layer], budget, window, KERNEL, pooling)
        for h in range(KV):
            got, want = set(trace.kept_positions(0, layer, h).tolist()), set(expected[h])
            same, total = same + len(got & want), total + len(want)
            cut = min(float(pooled[h, j]) for j in want if j < pooled.shape[1])
            differ = [j for j in got ^ want if j < pooled.shape[1]]
            untied += sum(abs(float(pooled[h, j]) - cut) > 1e-6 * cut for j in differ)
    return same, total, untied


@pytest.mark.parametrize("pooling, measured", [("avg", 5760), ("max", 5665)])
def test_snapkv_keeps_what_snapkvcluster_keeps(smollm, ids, qk, pooling, measured):
    """avg: every kept entry the same; max: 95 of 5,760 differ (98.35% shared), every one a tie
    at the cut (max pooling copies one vote onto up to 7 neighbours; top-k breaks ties its own way)."""
    trace = run(smollm, ids, "snapkv", budget=BUDGET, params={"window": WINDOW, "kernel": KERNEL, "pooling": pooling})
    same, total, untied = compare(trace, qk, [BUDGET] * LAYERS, WINDOW, pooling)
    assert (same, total, untied) == (measured, LAYERS * KV * BUDGET, 0)


def test_snapkv_pools_only_the_entries_before_the_window(smollm, ids, qk):
    """The scores that decided are the released code's pooled scores, also just before the
    window (where pooling the window's own votes in would raise them)."""
    trace = run(smollm, ids, "snapkv", budget=BUDGET, params={"window": WINDOW, "kernel": KERNEL}, steps=1)
    n = len(ids)
    for layer in (0, 15, 29):
        _, pooled = snapkv_released(qk[0][layer], qk[1][layer], BUDGET, WINDOW, KERNEL)
        got = torch.from_numpy(trace.scores[layer, :, : n - WINDOW]).double()
        torch.testing.assert_close(got, pooled, atol=1e-5, rtol=1e-4)


def test_pyramidkv_budgets_follow_pyramidkvcluster(smollm, ids, qk):
    n = len(ids)
    trace = run(smollm, ids, "pyramidkv", budget=BUDGET, params={"window": WINDOW, "kernel": KERNEL, "beta": 20})
    capacities = pyramidkv_released_capacities(BUDGET, WINDOW, 20, n, LAYERS)
    assert capacities[0] == 63 and capacities[-1] == 5  # (64 - 32) x 2 - 1, then down by 2 per layer
    assert trace.layer_budgets == [c + WINDOW for c in capacities]  # 95 down to 37: the window in every layer
    same, total, untied = compare(trace, qk, trace.layer_budgets, WINDOW, "avg")
    assert (same, total, untied) == (total, KV * sum(trace.layer_budgets), 0)  # every kept entry the same
    short = pyramidkv_released_capacities(BUDGET, WINDOW, 20, 70, LAYERS)  # cut at the prompt, raised at the top
    policy = registry()["pyramidkv"](window=WINDOW, beta=20)
    assert [policy.layer_budget(BUDGET, i, LAYERS, 70) for i in range(LAYERS)] == [c + WINDOW for c in short]
    assert [policy.layer_budget(BUDGET, i, LAYERS, 60) for i in range(LAYERS)] == [BUDGET] * LAYERS  # below 2 x 32


def test_pyramidkv_decodes_with_eager_attention(smollm, ids):
    """Layers hold different numbers of entries; eager attention adds a mask sized from layer 0."""
    sdpa = run(smollm, ids, "pyramidkv", steps=3, budget=BUDGET, params={"window": WINDOW})
    smollm.model.set_attn_implementation("eager")
    try:
        eager = run(smollm, ids, "pyramidkv", steps=3, budget=BUDGET, params={"window": WINDOW})
    finally:
        smollm.model.set_attn_implementation("sdpa")
    assert eager.generated_ids == sdpa.generated_ids
    assert eager.kv_bytes == sdpa.kv_bytes


@pytest.fixture(scope="module")
def kv(smollm, ids):
    """Real keys and values of layers 0 and 15 for the prompt: (kv_heads, n, head_dim) float32."""
    from transformers import DynamicCache

    cache = DynamicCache(config=smollm.model.config)
    with torch.inference_mode():
        smollm.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
    return [(cache.layers[i].keys[0].clone(), cache.layers[i].values[0].clone()) for i in (0, 15)]


@pytest.mark.parametrize("bits, group, residual", [(2, 32, 32), (2, 32, 128), (4, 32, 128)])
def test_kivi_quantizes_as_the_authors_code(kv, bits, group, residual):
    """Prefill with the first 70 tokens, then one token per step: after every step the attention
    reads what KIVI's attention reads (quantized before, the new token and the residual in full
    precision), and in the end codes, scales and zero points are KIVI's, bit for bit."""
    policy = registry()["kivi"](bits=bits, residual=residual, group_size=group)
    for keys, values in kv:
        store, ref = policy.make_store(0, 1, KV, D, torch.float32, "cpu"), KiviReleased(bits, group, residual)
        store.append(keys[:, :70], values[:, :70])
        ref.prefill(keys[:, :70], values[:, :70])
        for i in range(70, keys.shape[1]):
            store.append(keys[:, i : i + 1], values[:, i : i + 1])
            read_k, read_v = ref.step(keys[:, i : i + 1], values[:, i : i + 1])
            got_k, got_v = store.materialize()
            torch.testing.assert_close(got_k, read_k, atol=1e-6, rtol=0)  # code * scale + zero: one rounding apart
            torch.testing.assert_close(got_v, read_v, atol=1e-6, rtol=0)
            assert store.k.tail.shape[1] == (0 if ref.k_full is None else ref.k_full.shape[1])
            assert store.v.tail.shape[1] == ref.v_full.shape[1]
        codes, scale, mn = ref.k_quant  # (kv, d, T)
        assert torch.equal(unpack(store.k.q.codes, bits).int().transpose(1, 2), codes)
        assert torch.equal(store.k.q.scale.transpose(1, 2), scale) and torch.equal(store.k.q.zero.transpose(1, 2), mn)
        codes, scale, mn = ref.v_quant  # (kv, T, d)
        assert torch.equal(unpack(store.v.q.codes, bits).int(), codes)
        assert torch.equal(store.v.q.scale, scale) and torch.equal(store.v.q.zero, mn)


def test_kivi_bytes_by_hand_at_the_papers_setting(smollm, ids):
    R, G, bits = 128, 32, 2
    trace = run(smollm, ids, "kivi", steps=3, params={"bits": bits, "residual": R, "group_size": G})
    for s, got in enumerate(trace.kv_bytes):
        n = len(ids) + s
        kq, vq = n // R * R, n - R  # keys: whole chunks of R; values: all but the R newest
        keys = kq * D * bits // 8 + (kq // G) * D * 2 * 4 + (n - kq) * D * 4  # a scale and zero per G tokens of a channel
        values = vq * D * bits // 8 + vq * (D // G) * 2 * 4 + R * D * 4
        assert got == LAYERS * KV * (keys + values)
