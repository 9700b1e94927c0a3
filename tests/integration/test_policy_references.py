"""Every registered policy on the embedded SmolLM2, held to something computed independently of
kvviz: what it keeps (the paper's rule recomputed in float64 from the model's own projections,
or worked out by hand), the bytes it holds (by hand from the budget and the bit width), and its
output against plain transformers forwards where a policy should change nothing or only mask
attention.

One short prompt (P = 30 tokens), 3 steps, budget 16: about twenty short decodes on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.references import grouped_softmax, projections, window_band

from kvviz.runtime import engine
from kvviz.policies import PolicyError, registry
from kvviz.record.text import encode_prompt

TEXT = (
    "The lighthouse keeper climbed the stairs every evening to light the lamp. "
    "One night he found a bottle on the rocks, and inside it was a letter."
)
STEPS = 3
B = 16  # kept entries per layer and KV head
LAYERS, KV, Q, D = 30, 3, 9, 64  # SmolLM2-135M
ENTRY = 2 * D * 4  # bytes of one entry of one layer and KV head: a key and a value, float32


@pytest.fixture(scope="module")
def ids(smollm):
    ids = encode_prompt(smollm.tokenizer, TEXT)
    assert len(ids) == 30
    return ids


@pytest.fixture(scope="module")
def run(smollm, ids):
    def run(spec, **kw):
        kw.setdefault("max_new_tokens", STEPS)
        return engine.run(smollm.model, smollm.tokenizer, ids, spec, stop_at_eos=False, **kw)

    return run


@pytest.fixture(scope="module")
def full(run):
    return run("full", keep_logprobs=True)


@pytest.fixture(scope="module")
def qk(smollm, ids):
    """Queries and keys of the prompt in every layer, from transformers' own modules (not
    kvviz's capture): (layers, 9, P, 64) and (layers, 3, P, 64), float64."""
    return projections(smollm.model, ids)


def attention(q, k):
    """q (9, P, d), k (3, P, d) -> (3, P, P): causal softmax attention per query, mean over each
    KV head's 3 query heads (kvviz's documented GQA aggregation), float64."""
    n = q.shape[1]
    return grouped_softmax(q, k, torch.ones(n, n, dtype=torch.bool).tril()).mean(1)


def top(scores, k, protected=()):
    """Per KV head, the protected positions and the k - len(protected) highest others, sorted;
    checks that the choice is clear-cut (no near-tie at the cut that float32 could flip)."""
    out = []
    for row in scores:
        row = row.clone()
        row[list(protected)] = float("inf")
        order = row.argsort(descending=True)
        cut, below = row[order[k - 1]], row[order[k]]
        if torch.isfinite(cut):
            assert cut - below > 1e-6 * max(abs(float(cut)), 1e-3), "near-tie at the cut"
        out.append(sorted(order[:k].tolist()))
    return out


def plain_logprobs(model, seq, prompt_len, mask=None):
    """Log-probabilities of every step of a run (the last prompt position, then each fed token)
    from one plain transformers forward of the whole sequence: (steps, vocab)."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([seq]), attention_mask=mask, use_cache=False).logits
    return logits[0, prompt_len - 1 :].float().log_softmax(-1)


def kept(trace, step, layer):
    return [trace.kept_positions(step, layer, h).tolist() for h in range(KV)]


def held_bytes(trace, step, per_entry=ENTRY):
    """What the trace says is held at ``step``, times the bytes of one entry."""
    return sum(len(trace.kept_positions(step, l, h)) for l in range(LAYERS) for h in range(KV)) * per_entry


# --------------------------------------------------------------------------------- coverage

COVERED = {
    "full", "window", "streaming_llm", "sparse_pattern", "random", "knorm", "tova", "h2o", "merge", "snapkv",
    "pyramidkv", "lru", "lfu", "quant", "kivi", "lowrank", "head_share",
}
COVERED |= {"expected_attention", "chunkkv", "adakv"}  # their references: tests/integration/test_kvpress_b.py
COVERED |= {"keydiff", "observed_attention", "lagkv"}  # their references: tests/integration/test_kvpress_a.py
COVERED |= {"think"}  # its reference (ThinKPress's rule): tests/integration/test_authors_code.py
COVERED |= {"criticalkv", "duo_attention", "kvzip"}  # their references: tests/integration/test_kvpress_c.py
COVERED |= {"minicache"}  # its reference (MiniCache's merge rule in float64): tests/integration/test_minicache.py
COVERED |= {"turboquant"}  # its reference (the paper's codebook, distortion, quantizer in float64): tests/integration/test_turboquant.py
COVERED |= {"quest", "sparq", "simhash"}  # their references (page bounds, SparQ's scores, a plain SimHash in float64): tests/integration/test_retrieval.py


def test_every_registered_policy_is_held_to_a_reference_here():
    assert set(registry()) == COVERED  # a new policy needs its reference in this file


# ------------------------------------------------------------------ no eviction, no storage


def test_full_holds_every_token(full, ids):
    P = len(ids)
    assert (full.evicted_at_step == -1).all()
    assert full.kv_bytes == [(P + s) * LAYERS * KV * ENTRY for s in range(STEPS)] == full.kv_bytes_full


# ---------------------------------------------------------------- selectors by hand rules


def test_window_equals_a_banded_attention_mask(smollm, run, ids):
    """The window cache decodes like the full sequence through transformers with a band mask:
    prompt queries see the whole causal prefix (the prompt is compressed after its prefill), a
    generated token at position i sees positions i - B .. i (the B held entries and itself)."""
    trace = run("window", budget=B, keep_logprobs=True)
    P = len(ids)
    for s in range(STEPS):
        assert all(kept(trace, s, layer) == [list(range(P + s - B, P + s))] * KV for layer in range(LAYERS))
    assert trace.kv_bytes == [B * LAYERS * KV * ENTRY] * STEPS
    seq = ids + trace.generated_ids[:-1]
    band = window_band(len(seq), P, B)
    reference = plain_logprobs(smollm.model, seq, P, torch.zeros(band.shape).masked_fill(~band, float("-inf"))[None, None])
    torch.testing.assert_close(trace.extra["logprobs"], reference, atol=2e-4, rtol=0)
    assert trace.generated_ids == reference.argmax(-1).tolist()


def test_streaming_llm_keeps_sinks_and_the_newest(run, ids):
    trace = run("streaming_llm", budget=B, params={"n_sink": 4})
    P = len(ids)
    for s in range(STEPS):
        expected = list(range(4)) + list(range(P + s - (B - 4), P + s))
        assert kept(trace, s, 7) == [expected] * KV and kept(trace, s, 29) == [expected] * KV
    assert trace.kv_bytes == [B * LAYERS * KV * ENTRY] * STEPS


def test_sparse_pattern_globals_seeded_blocks_and_window(run, ids):
    trace = run("sparse_pattern", budget=B, params={"n_global": 2, "block_size": 4, "random_blocks": 2}, seed=3)
    P = len(ids)
    window = B - 2 - 2 * 4
    n_blocks = (P - window - 2) // 4
    draws = torch.Generator().manual_seed(3)  # the run's seed; one draw per layer at prefill, in layer order
    for layer in range(LAYERS):
        chosen = torch.rand(KV, n_blocks, generator=draws).topk(2).indices.sort().values
        for h in range(KV):
            blocks = sum((list(range(2 + 4 * b, 6 + 4 * b)) for b in chosen[h].tolist()), [])
            for s in range(STEPS):
                assert trace.kept_positions(s, layer, h).tolist() == [0, 1] + blocks + list(range(P + s - window, P + s))
    assert trace.kv_bytes == [B * LAYERS * KV * ENTRY] * STEPS


def test_random_keeps_the_seeded_draw(run, ids):
    trace = run("random", budget=B, seed=5)
    draws = torch.Generator().manual_seed(5)  # one (kv_heads, P) draw per layer at prefill, in layer order
    for layer in range(LAYERS):
        expected = torch.rand(KV, len(ids), generator=draws).topk(B).indices.sort().values.tolist()
        assert kept(trace, 0, layer) == expected
    assert trace.kv_bytes == [B * LAYERS * KV * ENTRY] * STEPS


# -------------------------------------------------- selectors recomputed from the projections


def test_knorm_keeps_the_lowest_key_norms(run, qk):
    trace = run("knorm", budget=B)
    _, keys = qk
    for layer in range(LAYERS):
        assert kept(trace, 0, layer) == top(-keys[layer].norm(dim=-1), B)
    assert trace.kv_bytes == [B * LAYERS * KV * ENTRY] * STEPS


def test_tova_keeps_what_the_last_prompt_query_attends_to(run, qk):
    trace = run("tova", budget=B)
    queries, keys = qk
    for layer in range(LAYERS):
        last = attention(queries[layer], keys[layer])[:, -1]  # (3, P)
        expected = top(last.mean(0, keepdim=True), B) * KV  # the paper's mean over all the layer's heads
        assert kept(trace, 0, layer) == expected
        for s in range(1, STEPS):
            held = kept(trace, s, layer)
            assert len(held[0]) == B and held[0] == held[1] == held[2]
    assert trace.kv_bytes == [B * LAYERS * KV * ENTRY] * STEPS


def h2o_reference(qk, layer, P, recent):
    queries, keys = qk
    accumulated = attention(queries[layer], keys[layer]).sum(1)  # (3, P): attention received from every prompt query
    return top(accumulated, B, protected=range(P - recent, P))


def test_h2o_keeps_heavy_hitters_and_the_recent_window(run, qk, ids):
    trace = run("h2o", budget=B, params={"recent": 4})
    P = len(ids)
    for layer in range(LAYERS):
        assert kept(trace, 0, layer) == h2o_reference(qk, layer, P, 4)
        for s in range(1, STEPS):
            assert all(set(range(P + s - 4, P + s)) <= set(h) and len(h) == B for h in kept(trace, s, layer))
    assert trace.kv_bytes == [B * LAYERS * KV * ENTRY] * STEPS


def test_merge_evicts_as_h2o_and_holds_the_budget(run, qk, ids):
    trace = run("merge", budget=B, params={"recent": 4})
    for layer in range(LAYERS):
        assert kept(trace, 0, layer) == h2o_reference(qk, layer, len(ids), 4)
    assert trace.kv_bytes == [B * LAYERS * KV * ENTRY] * STEPS


def snapkv_reference(qk, layer, P, budget, window=4, kernel=7):
    queries, keys = qk
    window = min(window, budget)
    votes = attention(queries[layer], keys[layer])[:, -window:].sum(1).numpy()  # (3, P)
    # zero-padded mean over the entries before the window only (SnapKVCluster pools attn[..., :-window])
    pooled = np.stack([np.convolve(v[: P - window], np.ones(kernel) / kernel, mode="same") for v in votes])
    pooled = np.concatenate([pooled, np.zeros((len(votes), window))], axis=1)  # the window: protected
    return top(torch.from_numpy(pooled), budget, protected=range(P - window, P))


def test_snapkv_keeps_the_observation_windows_votes_and_every_new_token(run, qk, ids):
    trace = run("snapkv", budget=B, params={"window": 4})
    P = len(ids)
    for layer in range(LAYERS):
        expected = snapkv_reference(qk, layer, P, B)
        for s in range(STEPS):
            assert kept(trace, s, layer) == [e + list(range(P, P + s)) for e in expected]
    assert trace.kv_bytes == [(B + s) * LAYERS * KV * ENTRY for s in range(STEPS)]
    assert trace.protection.anchored_at_prompt and trace.protection.recent == 4


def test_pyramidkv_keeps_snapkv_choices_within_shrinking_layer_budgets(run, qk, ids):
    trace = run("pyramidkv", budget=B, params={"window": 4, "beta": 4.0})
    P = len(ids)
    # PyramidKVCluster's schedule: the B - 4 = 12 entries outside the window make the pyramid,
    # from 2 x 12 - 12 // 4 = 21 to 3, by whole steps of (21 - 3) // 29 = 0: every layer 21 + 4
    assert trace.layer_budgets == [25] * LAYERS
    for layer, budget in enumerate(trace.layer_budgets):
        assert kept(trace, 0, layer) == snapkv_reference(qk, layer, P, budget)
    assert trace.kv_bytes == [(LAYERS * 25 + LAYERS * s) * KV * ENTRY for s in range(STEPS)]


def uses(qk, layer, threshold):
    """(3, P, P) bool: query i "uses" entry j (attention above the threshold), float64; checks
    that no attention sits so close to the threshold that float32 rounding could flip a use."""
    queries, keys = qk
    probs = attention(queries[layer], keys[layer])
    assert (probs - threshold).abs().min() > 1e-6
    return probs > threshold


def test_lru_evicts_the_least_recently_used(run, qk, ids):
    trace = run("lru", budget=B)
    P = len(ids)
    position = torch.arange(P, dtype=torch.float64)
    for layer in range(LAYERS):
        last_use = torch.where(uses(qk, layer, 0.02), position[None, :, None], -1.0).amax(1)  # (3, P)
        last_use = torch.maximum(last_use, position)  # entering the cache is a use
        for h, held in enumerate(kept(trace, 0, layer)):
            gone = sorted(set(range(P)) - set(held))
            # every entry kept was used at least as late as every entry evicted (ties: the oldest goes)
            assert min((last_use[h, p], p) for p in held) > max((last_use[h, p], p) for p in gone)
    assert trace.kv_bytes == [B * LAYERS * KV * ENTRY] * STEPS


def test_lfu_evicts_the_least_frequently_used(run, qk, ids):
    trace = run("lfu", budget=B, params={"recent": 2})
    P = len(ids)
    for layer in range(LAYERS):
        count = uses(qk, layer, 0.02).sum(1)  # (3, P)
        for h, held in enumerate(kept(trace, 0, layer)):
            assert {P - 2, P - 1} <= set(held)
            scored = [p for p in held if p < P - 2]
            gone = sorted(set(range(P)) - set(held))
            assert min((count[h, p], p) for p in scored) > max((count[h, p], p) for p in gone)
    assert trace.kv_bytes == [B * LAYERS * KV * ENTRY] * STEPS


# ------------------------------------------------------------------------------- stores


def kl_steps(run, full, spec, **params):
    forced = run(spec, params=params, forced_ids=full.generated_ids, reference_logprobs=full.extra["logprobs"])
    return forced.kl_to_reference


def test_quant_at_8_bits_stays_within_a_small_kl_of_full(run, full):
    kl8 = kl_steps(run, full, "quant", bits=8)
    assert kl8[0] == 0  # the prefill's attention reads the original keys and values
    assert 0 < kl8[1:].max() < 2e-4
    assert kl_steps(run, full, "quant", bits=2)[1:].max() > 1e-2  # the same measure sees 2 bits


def quant_entry_bytes(bits, groups):
    """One entry of one layer and KV head, quantized per token: codes plus a float32 scale and
    zero point per group of channels, for the key and the value."""
    return 2 * (D * bits // 8 + groups * 2 * 4)


def test_quant_bytes_follow_the_bit_width(run, ids):
    trace = run("quant", params={"bits": 4, "group_size": 32}, max_new_tokens=2)
    assert trace.kv_bytes == [(len(ids) + s) * LAYERS * KV * quant_entry_bytes(4, 2) for s in range(2)]


def test_kivi_bytes_follow_the_residual_window(run, ids):
    trace = run("kivi", params={"bits": 2, "residual": 8, "group_size": 32})
    for s, got in enumerate(trace.kv_bytes):
        n = len(ids) + s
        kq = n // 8 * 8  # keys: complete groups of 8 tokens, per channel; the rest in full precision
        vq = n - 8  # values: all but the 8 newest, per token
        keys = kq * D * 2 // 8 + (kq // 8) * D * 2 * 4 + (n - kq) * D * 4
        values = vq * D * 2 // 8 + vq * (D // 32) * 2 * 4 + 8 * D * 4
        assert got == LAYERS * KV * (keys + values)
    n = len(ids) + STEPS - 1
    assert (trace.store_error.full_precision_keys, trace.store_error.full_precision_values) == (n % 8, 8)


def test_lowrank_at_full_rank_is_refused(smollm):
    # at rank head_dim the coefficients alone are the full cache's size, and the bases come on top
    ids = encode_prompt(smollm.tokenizer, " ".join([TEXT] * 3))
    with pytest.raises(PolicyError, match=f"rank {D} is not below the head dimension {D}, so it would hold more bytes"):
        engine.run(smollm.model, smollm.tokenizer, ids, "lowrank", params={"rank": D}, max_new_tokens=STEPS, stop_at_eos=False)
    r = D - 1
    trace = engine.run(smollm.model, smollm.tokenizer, ids, "lowrank", params={"rank": r}, max_new_tokens=STEPS, stop_at_eos=False)
    # coefficients (n x r) and a 64 x r basis per KV head, for keys and values, float32
    assert trace.kv_bytes == [LAYERS * KV * 2 * ((len(ids) + s) * r + D * r) * 4 for s in range(STEPS)]
    assert 0 < max(trace.store_error.key) < 0.5


def test_head_share_with_a_group_per_kv_head_equals_full(run, full):
    trace = run("head_share", params={"groups": KV}, keep_logprobs=True)
    torch.testing.assert_close(trace.extra["logprobs"], full.extra["logprobs"], atol=1e-6, rtol=0)
    assert trace.kv_bytes == full.kv_bytes and trace.store_error.key == [0.0] * LAYERS
    mqa = run("head_share", params={"groups": 1}, max_new_tokens=1)
    assert mqa.kv_bytes[0] == full.kv_bytes[0] // KV  # one pooled head for three


# --------------------------------------------------------------------- a composition


def test_snapkv_with_quant_keeps_snapkvs_entries_and_holds_quants_bytes(run):
    alone = run("snapkv", budget=B, params={"window": 4})
    both = run("snapkv+quant", budget=B, params={"window": 4, "bits": 4, "group_size": 32})
    np.testing.assert_array_equal(both.evicted_at_step, alone.evicted_at_step)
    assert both.kv_bytes == [held_bytes(alone, s, quant_entry_bytes(4, 2)) for s in range(STEPS)]
    assert both.kv_bytes == [(B + s) * LAYERS * KV * quant_entry_bytes(4, 2) for s in range(STEPS)]
