"""Every policy end to end through engine.run on the tiny random Llama (2 layers, 2 KV heads,
head dim 16, float32): it runs, the cache holds exactly what the policy says, kv_bytes follow
the budget or the bit width, and evicted entries really leave the tensors."""

import pytest

from tests.references import grouped_softmax, projections, window_band

from kvviz.runtime import engine
from kvviz.policies import BudgetSelector, PolicyError, registry

PROMPT = [(7 * i + 3) % 120 + 1 for i in range(40)]
STEPS = 4
LAYERS, KV_HEADS, HEAD_DIM = 2, 2, 16
FULL_TOKEN_BYTES = 2 * LAYERS * KV_HEADS * HEAD_DIM * 4  # keys and values, float32
BUDGET = 24


class Tok:
    eos_token_id = None

    def decode(self, ids):
        return " ".join(map(str, ids))


def run(model, spec, params=None, budget=None, steps=STEPS):
    return engine.run(model, Tok(), PROMPT, spec, params=params, budget=budget, max_new_tokens=steps, stop_at_eos=False)


def held(trace, step, layer, head):
    return trace.kept_positions(step, layer, head).tolist()


# policies that evict at every step once the budget is full
EVERY_STEP = ["window", "streaming_llm", "h2o", "tova", "knorm", "lru", "lfu", "random", "sparse_pattern", "merge"]


@pytest.mark.parametrize("spec", EVERY_STEP)
def test_budgeted_selectors_hold_exactly_the_budget(tiny_llama, spec):
    trace = run(tiny_llama, spec, budget=BUDGET)
    assert trace.kv_bytes == [BUDGET * FULL_TOKEN_BYTES] * STEPS
    assert trace.kv_bytes_full == [(len(PROMPT) + s) * FULL_TOKEN_BYTES for s in range(STEPS)]
    for step in range(STEPS):
        seen = len(PROMPT) + step
        for layer in range(LAYERS):
            for head in range(KV_HEADS):
                kept = held(trace, step, layer, head)
                assert len(kept) == BUDGET and kept == sorted(set(kept)) and kept[-1] < seen
                # what left was recorded as evicted, and is not held
                ev = trace.evicted_at_step[layer, head, :seen]
                evicted = ((ev >= 0) & (ev <= step)).sum()
                assert evicted == seen - BUDGET


def test_streaming_llm_end_to_end(tiny_llama):
    trace = run(tiny_llama, "streaming_llm", {"n_sink": 4}, budget=BUDGET)
    last = STEPS - 1
    seen = len(PROMPT) + last
    assert held(trace, last, 1, 1) == list(range(4)) + list(range(seen - 20, seen))


def test_sparse_pattern_end_to_end(tiny_llama):
    trace = run(tiny_llama, "sparse_pattern", {"n_global": 2, "block_size": 4, "random_blocks": 2}, budget=BUDGET)
    seen = len(PROMPT) + STEPS - 1
    for layer in range(LAYERS):
        for head in range(KV_HEADS):
            kept = held(trace, STEPS - 1, layer, head)
            assert kept[:2] == [0, 1] and kept[-14:] == list(range(seen - 14, seen))
            middle = kept[2:-14]
            assert len(middle) == 8 and all((p - 2) % 4 == i % 4 for i, p in enumerate(middle))


def test_snapkv_and_pyramidkv_compress_the_prompt_once(tiny_llama):
    snap = run(tiny_llama, "snapkv", {"window": 4}, budget=BUDGET)
    assert snap.kv_bytes == [(BUDGET + s) * FULL_TOKEN_BYTES for s in range(STEPS)]
    pyramid = run(tiny_llama, "pyramidkv", {"window": 4, "beta": 4.0}, budget=16)
    assert pyramid.layer_budgets == [25, 7]  # 2 x 12 - 12 // 4 and 12 // 4, each with the window of 4
    for s in range(STEPS):
        assert [len(held(pyramid, s, layer, 0)) for layer in range(LAYERS)] == [25 + s, 7 + s]
    assert pyramid.kv_bytes[0] == (25 + 7) * FULL_TOKEN_BYTES // 2


def test_random_is_reproducible_with_the_seed(tiny_llama):
    a, b = run(tiny_llama, "random", budget=BUDGET), run(tiny_llama, "random", budget=BUDGET)
    assert (a.evicted_at_step == b.evicted_at_step).all()
    c = engine.run(tiny_llama, Tok(), PROMPT, "random", budget=BUDGET, max_new_tokens=STEPS, stop_at_eos=False, seed=1)
    assert (a.evicted_at_step != c.evicted_at_step).any()


def quant_token_bytes(bits, groups=1, asymmetric=True):
    """Bytes per token of a per-token quantized cache of the tiny model (scales in float32)."""
    per_head = HEAD_DIM * bits // 8 + groups * 4 * (2 if asymmetric else 1)
    return 2 * LAYERS * KV_HEADS * per_head


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quant_bytes_match_the_bit_width(tiny_llama, bits):
    trace = run(tiny_llama, "quant", {"bits": bits})
    assert trace.kv_bytes == [(len(PROMPT) + s) * quant_token_bytes(bits) for s in range(STEPS)]
    assert len(trace.store_error.key) == LAYERS
    assert 0 < max(trace.store_error.key) < {8: 0.01, 4: 0.15, 2: 0.6}[bits]


def test_quant_symmetric_groups(tiny_llama):
    trace = run(tiny_llama, "quant", {"bits": 4, "symmetric": True, "group_size": 8})
    assert trace.kv_bytes[0] == len(PROMPT) * quant_token_bytes(4, groups=2, asymmetric=False)


def test_snapkv_then_quant(tiny_llama):
    trace = run(tiny_llama, "snapkv+quant", {"bits": 2, "window": 4}, budget=BUDGET)
    assert trace.kv_bytes == [(BUDGET + s) * quant_token_bytes(2) for s in range(STEPS)]
    assert trace.policy == "snapkv+quant"


def test_h2o_then_kivi_and_merge_then_quant_hold_the_budget(tiny_llama):
    kivi = run(tiny_llama, "h2o+kivi", {"residual": 8}, budget=BUDGET)
    quant = run(tiny_llama, "merge+quant", {"bits": 4}, budget=BUDGET)
    assert quant.kv_bytes == [BUDGET * quant_token_bytes(4)] * STEPS
    assert len(held(kivi, STEPS - 1, 0, 0)) == BUDGET
    assert kivi.kv_bytes == [kivi_bytes(BUDGET, 8, 2, 32)] * STEPS


def kivi_bytes(n, residual, bits, group):
    group = min(group, HEAD_DIM)
    kq = n // residual * residual
    vq = max(n - residual, 0)
    keys = kq * HEAD_DIM * bits // 8 + (kq // residual) * HEAD_DIM * 8 + (n - kq) * HEAD_DIM * 4
    values = vq * HEAD_DIM * bits // 8 + vq * (HEAD_DIM // group) * 8 + (n - vq) * HEAD_DIM * 4
    return LAYERS * KV_HEADS * (keys + values)


def test_kivi_bytes_follow_the_residual_window(tiny_llama):
    trace = run(tiny_llama, "kivi", {"bits": 2, "residual": 8, "group_size": 16}, steps=10)
    assert trace.kv_bytes == [kivi_bytes(len(PROMPT) + s, 8, 2, 16) for s in range(10)]
    # the last 8 values wait in full precision; the keys of a group of 8 that is filling (43 = 5 x 8 + 3)
    assert (trace.store_error.full_precision_values, trace.store_error.full_precision_keys) == (8, (len(PROMPT) + 9) % 8)


def test_lowrank_at_the_head_dim_is_refused_before_the_run(tiny_llama):
    with pytest.raises(PolicyError, match="rank 16 is not below the head dimension 16, so it would hold more bytes"):
        run(tiny_llama, "lowrank")


def test_lowrank_bytes(tiny_llama):
    trace = run(tiny_llama, "lowrank", {"rank": 4})
    bases = LAYERS * 2 * KV_HEADS * HEAD_DIM * 4 * 4
    assert trace.kv_bytes == [(len(PROMPT) + s) * LAYERS * 2 * KV_HEADS * 4 * 4 + bases for s in range(STEPS)]
    assert 0 < min(trace.store_error.key) and max(trace.store_error.key) < 1


def test_head_share_halves_the_tiny_cache_and_refuses_eviction(tiny_llama):
    trace = run(tiny_llama, "head_share", {"groups": 1})
    assert trace.kv_bytes == [(len(PROMPT) + s) * FULL_TOKEN_BYTES // 2 for s in range(STEPS)]
    with pytest.raises(PolicyError, match="head_share"):
        run(tiny_llama, "window+head_share", budget=BUDGET)


def test_every_registered_policy_runs(tiny_llama):
    for name, cls in registry().items():
        budget = BUDGET if issubclass(cls, BudgetSelector) else None  # a retriever keeps all and reads a set
        params = {"rank": 8} if name == "lowrank" else None  # its default rank is this head_dim: refused
        params = {"start": 0.0} if name == "minicache" else params  # 2 layers: the deep half alone is no pair
        params = {"head_ratio": 1.0} if name == "duo_attention" else params  # a retrieval head holds its layer whole
        trace = run(tiny_llama, name, params, budget=budget, steps=2)
        assert trace.n_steps == 2 and trace.kv_bytes[0] > 0, name
        if budget is not None:
            assert trace.kv_bytes[0] < trace.kv_bytes_full[0], name
        # kivi's default residual holds this short prompt in full
        if cls.kind == "store" and name != "kivi":
            assert trace.kv_bytes[0] < trace.kv_bytes_full[0], name


def test_lost_mass_is_the_attention_each_step_put_on_what_it_evicted(tiny_llama):
    """With capture_queries, trace.lost_mass[s, layer] is the attention the step's last query
    gave the entries evicted at that step (mean over query heads), recomputed here in float64
    from transformers' own projections. A window of BUDGET: the prefill evicts the prompt's
    oldest tokens after its last query read them all; each decode step's query reads the window
    and itself, then the oldest entry leaves."""
    trace = engine.run(tiny_llama, Tok(), PROMPT, "window", budget=BUDGET, max_new_tokens=STEPS, stop_at_eos=False, capture_queries=True)
    P, seq = len(PROMPT), PROMPT + trace.generated_ids[:-1]
    queries, keys = projections(tiny_llama, seq, window_band(len(seq), P, BUDGET))
    for s in range(STEPS):
        i = P - 1 + s  # the position of this step's query
        read = list(range(P)) if s == 0 else list(range(i - BUDGET, i + 1))
        evicted = list(range(P - BUDGET)) if s == 0 else [i - BUDGET]
        for layer in range(LAYERS):
            probs = grouped_softmax(queries[layer][:, i : i + 1], keys[layer][:, read])[:, :, 0]  # (kv, group, read)
            lost = probs[..., [read.index(p) for p in evicted]].sum(-1).mean()
            assert trace.lost_mass[s, layer] == pytest.approx(float(lost), rel=1e-4, abs=1e-6)
    assert trace.lost_mass.min() > 0
    full = engine.run(tiny_llama, Tok(), PROMPT, "full", max_new_tokens=2, capture_queries=True)
    assert (full.lost_mass == 0).all()
