"""SnapKV, PyramidKV, KIVI, StreamingLLM, TOVA and H2O against rules re-implemented from their
authors' released code (tests/released.py, which cites repository, commit, file and lines), on
the embedded SmolLM2.

Kept sets are compared per layer and KV head at the end of prefill (SnapKV, PyramidKV) or after
the prompt and each of 8 decode steps (StreamingLLM, TOVA, H2O); the share of kept entries the
two agree on is pinned at its measured value. KIVI's codes, scales and zero points are compared
element by element on the model's real keys and values, and its bytes by hand.

Run with KVVIZ_WRITE_RESULTS=1, each test records what it measured into
benchmarks/results/faithfulness.json, from which benchmarks/faithfulness_table.py renders the
README's table (tests/unit/test_faithfulness_table.py keeps the two equal)."""

from __future__ import annotations

import os

import pytest
import torch
from benchmarks import faithfulness_table
from tests.kvpress_rules_b import layer_inputs
from tests.kvpress_rules_c import THINK_SOURCE, think_pruned_channels
from tests.kvpress_rules_d import CRITICALKV_SOURCE, DUO_SOURCE, KVZIP_SOURCE
from tests.references import projections
from tests.released import (
    H2OReleased,
    KiviReleased,
    TovaReleased,
    pyramidkv_released_capacities,
    run_released,
    snapkv_released,
    start_recent_released,
)

from kvviz.policies import build, registry
from kvviz.record.text import encode_prompt
from kvviz.runtime import engine
from kvviz.runtime.policy_cache import PolicyCache
from kvviz.storage.quantize import unpack

TEXT = (
    "The lighthouse keeper climbed the stairs every evening to light the lamp. One night he found a bottle "
    "on the rocks, and inside it was a letter written in a careful hand. It asked whoever found it to walk "
    "to the old mill at dawn and wait by the river. He folded the letter, put it in his coat, and watched "
    "the sea until the light came. At dawn he went down the hill, past the sleeping village, to the mill."
)
LAYERS, KV, D = 30, 3, 64
BUDGET, WINDOW, KERNEL = 64, 32, 7
DECODE = 8  # decode steps compared after the prompt
KVPRESS_FACTORY = "Zefan-Cai/KVCache-Factory c97f9d7, `pyramidkv/pyramidkv_utils.py`"

# The README's faithfulness table, one row per policy in this order: the released code, what
# kvviz does otherwise on purpose, and the parts of the "Measured agreement" cell (each written
# by a test below from what it measured).
ROWS = {
    "snapkv": {
        "released": "FasterDecoding/SnapKV e216ddc, `snapkv/monkeypatch/snapkv_utils.py` (`SnapKVCluster.update_kv`);"
        f" KV-head mean as {KVPRESS_FACTORY}",
        "differs": "a budget at or below the window keeps the newest tokens (released: assertion)",
        "parts": ["avg", "max"],
    },
    "pyramidkv": {
        "released": f"{KVPRESS_FACTORY} (`PyramidKVCluster`)",
        "differs": "as SnapKV",
        "parts": ["avg"],
    },
    "kivi": {
        "released": "jy-yuan/KIVI 876b4d2, `models/llama_kivi.py`, `quant/new_pack.py`",
        "differs": "R below G groups keys by R (released: assertion); dequantized attention instead of fused kernels",
        "parts": ["2-32-32", "2-32-128", "4-32-128", "bytes"],
    },
    "streaming_llm": {
        "released": "mit-han-lab/streaming-llm 2e50426, `streaming_llm/kv_cache.py` (`StartRecentKVCache`), called after"
        " every forward as in `examples/eval_long_ppl.py`",
        "differs": "true positions: the released Llama attention (`streaming_llm/pos_shift/modify_llama.py`) renumbers"
        " the cached keys 0..n-1 at every step (its position shift); the kept entries do not depend on it",
        "parts": ["kept"],
    },
    "tova": {
        "released": "schwartz-lab-NLP/TOVA 9c7d09b, `src/tova_cache.py` (`TOVACache.reduce`), called after every"
        " attention (`src/convert_models/llama_custom.py`)",
        "differs": "`per_kv_head` (off by default) ranks each KV head by its own query heads; the released code"
        " averages over all heads",
        "parts": ["kept", "per_kv_head"],
    },
    "h2o": {
        "released": "FMInference/H2O ac75c2a, `h2o_hf/utils_real_drop/modify_llama.py` (`H2OKVCache_LayerWise`), MHA"
        " only: for GQA a KV head's score sums its query heads' (`H2OKVCluster` in " + KVPRESS_FACTORY
        + " reduces them too, by mean)",
        "differs": "GQA: kvviz takes the mean over a KV head's query heads, the same ranking as the sum",
        "parts": ["56-8", "32-32", "64-0"],
    },
    "think": {
        "released": THINK_SOURCE,
        "differs": "kvviz stores the keys on the kept channels (bytes freed; kvpress zeroes them in place) and"
        " prunes generated tokens' keys on the same channels (kvpress keeps them whole); after a selector"
        " (`snapkv+think`) the channels are scored on every prompt key, where kvpress's"
        " `ComposedPress([SnapKVPress, ThinKPress])` scores the keys SnapKV kept",
        "parts": ["0.5", "0.25", "snapkv+think"],
    },
    # measured by tests/integration/test_kvpress_c.py (same prompt), the press re-implemented in tests/kvpress_rules_d.py
    "criticalkv": {
        "released": CRITICALKV_SOURCE,
        "differs": "the budget is kvviz's (one rounding rule); with `adaptive` every head holds the largest head budget"
        " (rectangular tensors; kvpress masks the pruned entries in attention)",
        "parts": ["knorm", "adaptive"],
    },
    "duo_attention": {
        "released": DUO_SOURCE,
        "differs": "heads scored on the run's prompt (kvpress: 50 BookSum texts), sinks + recent from the budget"
        " (kvpress: 128 + 256); a layer with a retrieval head holds every entry in all its heads (kvpress masks)",
        "parts": ["heads"],
    },
    "kvzip": {
        "released": KVZIP_SOURCE,
        "differs": "each layer at its budget, over all its heads (kvpress's `layerwise=True`; its default spreads one"
        " threshold over all layers); rectangular tensors hold fillers; the whole prompt is repeated, chat template"
        " included",
        "parts": ["layerwise"],
    },
}


def record(prompt_len: int, policy: str, part: str, text: str, **measured) -> None:
    """Write this measurement into benchmarks/results/faithfulness.json (KVVIZ_WRITE_RESULTS=1)."""
    if os.environ.get("KVVIZ_WRITE_RESULTS") != "1":
        return
    meta = {"model": "the embedded SmolLM2-135M on the CPU in float32", "prompt_tokens": prompt_len}
    faithfulness_table.record(policy, part, text, measured, rows=ROWS, meta=meta)


def share(same: int, total: int) -> str:
    return "100%" if same == total else f"{same / total:.2%}"


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
    ties = "" if same == total else ", every difference a tie at the cut" if not untied else f", {untied} differences not ties"
    head = f"budget {BUDGET}, window {WINDOW}, kernel {KERNEL}, kept entries at the prefill: " if pooling == "avg" else ""
    record(len(ids), "snapkv", pooling, f"{head}{pooling} pooling {same:,} of {total:,} shared ({share(same, total)}){ties}",
           shared=same, total=total, untied=untied)
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
    record(len(ids), "pyramidkv", "avg",
           f"per-layer budgets equal ({trace.layer_budgets[0]} down to {trace.layer_budgets[-1]} at budget {BUDGET},"
           f" window {WINDOW}, beta 20); kept entries {same:,} of {total:,} shared ({share(same, total)})",
           shared=same, total=total, untied=untied, layer_budgets=trace.layer_budgets)
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
def test_kivi_quantizes_as_the_authors_code(ids, kv, bits, group, residual):
    """Prefill with the first 70 tokens, then one token per step: after every step the attention
    reads what KIVI's attention reads (quantized before, the new token and the residual in full
    precision), and in the end codes, scales and zero points are KIVI's, bit for bit."""
    policy = registry()["kivi"](bits=bits, residual=residual, group_size=group)
    worst, equal = 0.0, True
    for keys, values in kv:
        store, ref = policy.make_store(0, 1, KV, D, torch.float32, "cpu"), KiviReleased(bits, group, residual)
        store.append(keys[:, :70], values[:, :70])
        ref.prefill(keys[:, :70], values[:, :70])
        for i in range(70, keys.shape[1]):
            store.append(keys[:, i : i + 1], values[:, i : i + 1])
            read_k, read_v = ref.step(keys[:, i : i + 1], values[:, i : i + 1])
            got_k, got_v = store.materialize()
            worst = max(worst, float((got_k - read_k).abs().max()), float((got_v - read_v).abs().max()))
            torch.testing.assert_close(got_k, read_k, atol=1e-6, rtol=0)  # code * scale + zero: one rounding apart
            torch.testing.assert_close(got_v, read_v, atol=1e-6, rtol=0)
            assert store.k.tail.shape[1] == (0 if ref.k_full is None else ref.k_full.shape[1])
            assert store.v.tail.shape[1] == ref.v_full.shape[1]
        codes, scale, mn = ref.k_quant  # (kv, d, T)
        k_equal = (torch.equal(unpack(store.k.q.codes, bits).int().transpose(1, 2), codes)
                   and torch.equal(store.k.q.scale.transpose(1, 2), scale) and torch.equal(store.k.q.zero.transpose(1, 2), mn))
        codes, scale, mn = ref.v_quant  # (kv, T, d)
        v_equal = (torch.equal(unpack(store.v.q.codes, bits).int(), codes)
                   and torch.equal(store.v.q.scale, scale) and torch.equal(store.v.q.zero, mn))
        equal = equal and k_equal and v_equal
    head = ("codes, scales and zero points of layers 0 and 15 (the prompt, then a token a step), and what the"
            " attention reads: " if (bits, residual) == (2, 32) else "")
    record(len(ids), "kivi", f"{bits}-{group}-{residual}",
           f"{head}{bits} bits, G {group}, R {residual}: " + ("bit for bit" if equal else "NOT bit for bit")
           + f", reads within {worst:.1e}",
           bit_equal=equal, max_abs_read_difference=worst)
    assert equal
    assert worst <= 1e-6  # code * scale + zero: one rounding apart


def test_kivi_bytes_by_hand_at_the_papers_setting(smollm, ids):
    R, G, bits = 128, 32, 2
    trace = run(smollm, ids, "kivi", steps=3, params={"bits": bits, "residual": R, "group_size": G})
    for s, got in enumerate(trace.kv_bytes):
        n = len(ids) + s
        kq, vq = n // R * R, n - R  # keys: whole chunks of R; values: all but the R newest
        keys = kq * D * bits // 8 + (kq // G) * D * 2 * 4 + (n - kq) * D * 4  # a scale and zero per G tokens of a channel
        values = vq * D * bits // 8 + vq * (D // G) * 2 * 4 + R * D * 4
        assert got == LAYERS * KV * (keys + values)
    record(len(ids), "kivi", "bytes", f"bytes held equal to a count by hand at R {R}, G {G}, {bits} bits",
           steps=len(trace.kv_bytes))


def kept_by_step(trace):
    """kept[step][layer][kv_head]: the sorted positions held after the prompt (step 0) and each decode step."""
    return [
        [[trace.kept_positions(s, layer, h).tolist() for h in range(KV)] for layer in range(LAYERS)]
        for s in range(trace.n_steps)
    ]


def agreement(got, want) -> tuple[int, int]:
    """(kept entries both hold, entries the released code holds): over steps, layers, KV heads."""
    assert len(got) == len(want) == DECODE + 1
    same = total = 0
    for g_step, w_step in zip(got, want):
        for g_layer, w_layer in zip(g_step, w_step):
            for g, w in zip(g_layer, w_layer):
                same, total = same + len(set(g) & set(w)), total + len(w)
    return same, total


def evicted_while_decoding(got) -> bool:
    return any(got[s][layer] != got[s - 1][layer] for s in range(1, len(got)) for layer in range(LAYERS))


def test_streaming_llm_keeps_what_startrecentkvcache_keeps(smollm, ids):
    """StartRecentKVCache after the prompt and after every decode step: the first start_size and
    the last recent_size entries (kvviz: n_sink sinks + the budget's rest), all layers and KV heads."""
    n_sink = 4
    trace = run(smollm, ids, "streaming_llm", steps=DECODE + 1, budget=BUDGET, params={"n_sink": n_sink})
    held, want = torch.arange(0), []
    for step in range(DECODE + 1):
        new = torch.arange(len(ids)) if step == 0 else torch.tensor([len(ids) + step - 1])
        held = start_recent_released(torch.cat([held, new]), n_sink, BUDGET - n_sink)
        want.append([[held.tolist()] * KV] * LAYERS)
    got = kept_by_step(trace)
    same, total = agreement(got, want)
    record(len(ids), "streaming_llm", "kept",
           f"budget {BUDGET} ({n_sink} sinks + {BUDGET - n_sink} recent): kept entries after the prompt and each of"
           f" {DECODE} decode steps, {LAYERS} layers × {KV} KV heads, {same:,} of {total:,} shared ({share(same, total)})",
           shared=same, total=total, decode_steps=DECODE)
    assert (same, total) == (LAYERS * KV * BUDGET * (DECODE + 1),) * 2
    assert got[-1][0][0] == list(range(n_sink)) + list(range(len(ids) + DECODE - (BUDGET - n_sink), len(ids) + DECODE))


def test_tova_keeps_what_tovacache_keeps(smollm, ids):
    """TOVACache.reduce after the prompt (compressed at once, ranked by the last prompt query)
    and after every decode step (one eviction), against a float64 run whose layers hold the
    released cache; the closest decision is pinned far from a tie, so float32 cannot flip it."""
    trace = run(smollm, ids, "tova", steps=DECODE + 1, budget=BUDGET)
    want, caches = run_released(smollm.model, ids, trace.generated_ids[:-1], lambda: TovaReleased(BUDGET))
    got = kept_by_step(trace)
    same, total = agreement(got, want)
    closest = min(m for c in caches for m in c.margins)
    record(len(ids), "tova", "kept",
           f"budget {BUDGET}, the prompt compressed at once by its last query (as `TOVACache`), then one eviction a"
           f" step: kept entries after the prompt and each of {DECODE} decode steps, {LAYERS} layers × {KV} KV heads,"
           f" {same:,} of {total:,} shared ({share(same, total)})",
           shared=same, total=total, decode_steps=DECODE, closest_cut_margin=closest)
    assert evicted_while_decoding(got)
    assert closest > 1e-4
    assert (same, total) == (LAYERS * KV * BUDGET * (DECODE + 1),) * 2


def test_tova_per_kv_head_is_not_the_released_rule(smollm, ids):
    """kvviz's `per_kv_head` option (each KV head ranked by its own query heads) against
    TOVACache's mean over all heads, after the prompt: the measured difference, pinned."""
    trace = run(smollm, ids, "tova", steps=1, budget=BUDGET, params={"per_kv_head": True})
    want, _ = run_released(smollm.model, ids, [], lambda: TovaReleased(BUDGET))
    got = kept_by_step(trace)
    same = sum(len(set(g) & set(w)) for g_layer, w_layer in zip(got[0], want[0]) for g, w in zip(g_layer, w_layer))
    total = LAYERS * KV * BUDGET
    record(len(ids), "tova", "per_kv_head",
           f"with `per_kv_head` (not the released rule) {same:,} of {total:,} after the prompt ({share(same, total)})",
           shared=same, total=total)
    assert (same, total) == (4505, total)  # 78.21%


@pytest.mark.parametrize("heavy, recent", [(56, 8), (32, 32), (64, 0)])
def test_h2o_keeps_what_h2okvcache_layerwise_keeps(smollm, ids, heavy, recent):
    """H2OKVCache_LayerWise (hh_size heavy hitters by attention accumulated over every query so
    far, recent_size newest) after the prompt and after every decode step, with heavy and recent
    set independently; GQA as the sum over a KV head's query heads (tests/released.py says why)."""
    trace = run(smollm, ids, "h2o", steps=DECODE + 1, budget=heavy + recent, params={"recent": recent})
    want, caches = run_released(smollm.model, ids, trace.generated_ids[:-1], lambda: H2OReleased(heavy, recent))
    got = kept_by_step(trace)
    same, total = agreement(got, want)
    closest = min(m for c in caches for m in c.margins)
    head = (f"kept entries after the prompt and each of {DECODE} decode steps, {LAYERS} layers × {KV} KV heads:"
            " " if (heavy, recent) == (56, 8) else "")
    record(len(ids), "h2o", f"{heavy}-{recent}",
           f"{head}heavy {heavy} + recent {recent}, {same:,} of {total:,} shared ({share(same, total)})",
           shared=same, total=total, decode_steps=DECODE, closest_cut_margin=closest)
    assert evicted_while_decoding(got)
    assert (same, total) == (LAYERS * KV * (heavy + recent) * (DECODE + 1),) * 2


def think_prefilled(smollm, ids, spec, params, budget=None) -> PolicyCache:
    """A cache after the prompt's forward (float32, CPU), its stores as the decode finds them."""
    cfg = smollm.model.config
    cache = PolicyCache(build(spec, params, budget=budget), LAYERS, len(ids), len(ids) + 4, KV, torch.device("cpu"))
    with torch.inference_mode(), cache.attached(smollm.model):
        engine.prefill(smollm.model, cache, ids)
    assert cfg.num_hidden_layers == LAYERS
    return cache


@pytest.mark.parametrize(("spec", "ratio"), [("think", 0.5), ("think", 0.25), ("snapkv+think", 0.5)])
def test_think_prunes_the_channels_thinkpress_prunes(smollm, ids, spec, ratio):
    """ThinKPress.compress after the prompt (window 32): the key channels pruned per layer and KV
    head, against the press re-implemented in float64 (tests/kvpress_rules_c.py); the stored keys
    really are narrower, and hold the prompt's keys on the kept channels. With snapkv in front the
    channels are the same (kvviz scores them on every prompt key, before eviction)."""
    n_pruned = int(D * ratio)
    budget = BUDGET if "+" in spec else None
    cache = think_prefilled(smollm, ids, spec, {"think.channel_ratio": ratio, "think.window": WINDOW}, budget=budget)
    inputs = layer_inputs(smollm.model, ids)
    rotary = smollm.model.model.rotary_emb
    same = total = 0
    margins = []
    for layer, (h, wq, keys, _) in enumerate(inputs):
        want, margin = think_pruned_channels(h, wq, keys, rotary, window=WINDOW, ratio=ratio)
        margins.append(margin)
        store = cache.layers[layer].store
        held = len(store)
        assert store.keys.shape == (KV, held, D - n_pruned)  # bytes freed, not zeros
        for head in range(KV):
            kept = set(store.channels[head].tolist())
            pruned = set(range(D)) - kept
            same, total = same + len(pruned & want[head]), total + len(want[head])
            rows = cache.layers[layer].positions[head]
            ref = keys[head, rows][:, sorted(kept)].float()
            torch.testing.assert_close(store.keys[head], ref, atol=2e-4, rtol=1e-4)
    part = spec if "+" in spec else str(ratio)
    label = f"snapkv (budget {BUDGET}) + ThinK at {ratio}" if "+" in spec else f"channel ratio {ratio}"
    record(len(ids), "think", part,
           f"{label}: key channels pruned after the prompt, {LAYERS} layers × {KV} KV heads, window {WINDOW},"
           f" {same:,} of {total:,} shared ({share(same, total)})",
           shared=same, total=total, closest_cut_margin=min(margins))
    assert (same, total) == (LAYERS * KV * n_pruned,) * 2
