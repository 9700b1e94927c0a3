"""Retrieval policies (quest, sparq, simhash) on the embedded SmolLM2, held to references written
here in float64 from transformers' own projections (tests/references.py): Quest's page bounds and
chosen pages, SparQ's approximate scores and top-k, and a plain SimHash's Hamming similarities.

The prefill reads every entry (its logits equal full's); the first decode step's query in the first
layer that retrieves depends only on layers that read everything, so its read set can be recomputed
from the full sequence's projections. With the whole cache as read budget each policy equals full.
One 30-token prompt, 2-3 steps each: a few seconds on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.references import grouped_softmax, projections

from kvviz.policies import build
from kvviz.record.text import encode_prompt
from kvviz.record.token_states import Scope, token_records
from kvviz.runtime import engine
from kvviz.runtime.policy_cache import PolicyCache

TEXT = (
    "The lighthouse keeper climbed the stairs every evening to light the lamp. "
    "One night he found a bottle on the rocks, and inside it was a letter."
)
LAYERS, KV, D = 30, 3, 64


@pytest.fixture(scope="module")
def ids(smollm):
    return encode_prompt(smollm.tokenizer, TEXT)


@pytest.fixture(scope="module")
def full(smollm, ids):
    return engine.run(smollm.model, smollm.tokenizer, ids, "full", max_new_tokens=3, stop_at_eos=False, keep_logprobs=True)


@pytest.fixture(scope="module")
def qk(smollm, ids, full):
    """Queries and keys of the prompt and the first generated token, float64, every layer."""
    return projections(smollm.model, ids + full.generated_ids[:1])


def first_decode(smollm, ids, token, spec, params, budget=None):
    """Prefill and one decode step of ``token``; returns (cache, prefill logits, step logits)."""
    pipeline = build(spec, params, budget=budget)
    P = len(ids)
    cache = PolicyCache(pipeline, LAYERS, P, P + 2, KV, "cpu")
    with torch.inference_mode(), cache.attached(smollm.model):
        first = engine.prefill(smollm.model, cache, ids)
        second = engine.decode_step(smollm.model, cache, torch.tensor([[token]]), torch.tensor([P]))
    return cache, first, second


def read_set(cache, layer):
    """(kv_heads, k) positions the decode step (step 1) read in ``layer``."""
    read_at = cache.records[0].read_at[layer]
    return [torch.nonzero(row == 1).flatten().tolist() for row in read_at]


@pytest.mark.parametrize("spec", ["quest", "sparq", "simhash"])
def test_whole_cache_as_read_budget_equals_full(smollm, ids, full, spec):
    trace = engine.run(smollm.model, smollm.tokenizer, ids, spec, params={"read_budget": 10_000}, max_new_tokens=3,
                       stop_at_eos=False, keep_logprobs=True)
    assert trace.generated_ids == full.generated_ids
    torch.testing.assert_close(trace.extra["logprobs"], full.extra["logprobs"], atol=1e-5, rtol=0)
    assert (trace.evicted_at_step == -1).all()  # retrieval keeps every entry


def clear_top(scores, k):
    """Indices of the k highest per row (plus the last, always read), sorted; asserts a clear cut."""
    out = []
    for row in scores:
        row = row.clone()
        row[-1] = float("inf")
        order = row.argsort(descending=True)
        assert row[order[k - 1]] - row[order[k]] > 1e-6 * max(1.0, abs(float(row[order[k]])))
        out.append(sorted(order[:k].tolist()))
    return out


def test_quest_reads_the_pages_with_the_highest_bound(smollm, ids, full, qk):
    page, budget, layer = 4, 12, 2  # Quest reads every entry in layers 0 and 1
    cache, first, _ = first_decode(smollm, ids, full.generated_ids[0], "quest", {"read_budget": budget, "page_size": page})
    assert first.argmax().item() == full.generated_ids[0]  # the prefill reads everything
    assert all(read_set(cache, li) == [list(range(len(ids) + 1))] * KV for li in range(2))  # and so do layers 0, 1
    q, k = qk[0][layer][:, -1], qk[1][layer]  # (9, d), (3, n, d) float64, n = P + 1
    n = k.shape[1]
    bounds = []
    for h in range(KV):
        pages = [k[h, s:s + page] for s in range(0, n, page)]
        bounds.append(torch.stack([
            sum(torch.maximum(q[3 * h + g] * p.max(0).values, q[3 * h + g] * p.min(0).values).sum() for g in range(3))
            for p in pages]))
    chosen = clear_top(torch.stack(bounds), budget // page)
    want = [sorted(i for pg in pages for i in range(pg * page, min(pg * page + page, n))) for pages in chosen]
    assert read_set(cache, layer) == want
    assert len(want[0]) == budget - (-(-n // page) * page - n)  # the partial newest page


def test_sparq_reads_the_top_approximate_scores(smollm, ids, full, qk):
    r, budget = 8, 10
    cache, first, _ = first_decode(smollm, ids, full.generated_ids[0], "sparq", {"read_budget": budget, "r": r})
    assert first.argmax().item() == full.generated_ids[0]
    q, k = qk[0][0][:, -1], qk[1][0]  # layer 0: its query does not depend on what was read
    scores = []
    for h in range(KV):
        total = 0
        for g in range(3):
            qh = q[3 * h + g]
            i = qh.abs().argsort(descending=True)[:r]
            tau = (D * qh[i].abs().sum() / qh.abs().sum()).sqrt()
            total = total + (k[h][:, i] @ qh[i] / tau).softmax(0)
        scores.append(total)
    assert read_set(cache, 0) == clear_top(torch.stack(scores), budget)


def test_simhash_reads_the_most_similar_signatures(smollm, ids, full, qk):
    bits, tables, budget, seed = 6, 3, 10, 5
    cache, first, _ = first_decode(smollm, ids, full.generated_ids[0], "simhash",
                                   {"read_budget": budget, "bits": bits, "tables": tables, "seed": seed})
    assert first.argmax().item() == full.generated_ids[0]
    planes = torch.randn(tables * bits, D, generator=torch.Generator().manual_seed(seed)).double()  # the hash's hyperplanes
    q, k = qk[0][0][:, -1], qk[1][0]
    got = read_set(cache, 0)
    for h in range(KV):
        key_sig = (k[h] @ planes.T) > 0  # (n, bits * tables): plain SimHash
        sim = sum(((q[3 * h + g] @ planes.T) > 0)[None].eq(key_sig).sum(-1) for g in range(3))  # (n,)
        sim[-1] = 10**6
        read = torch.tensor(got[h])
        assert len(read) == budget
        unread = torch.tensor([i for i in range(len(sim)) if i not in got[h]])
        assert sim[read].min() >= sim[unread].max()  # ties at the cut may go either way


def test_snapkv_then_quest_evicts_first_then_reads_among_the_kept(smollm, ids, full):
    """snapkv+quest: SnapKV compresses the prompt to its budget at prefill (as snapkv alone does),
    then each decode step reads Quest's pages among the entries SnapKV kept, never an evicted one."""
    budget, read = 16, 8
    cache, _, _ = first_decode(smollm, ids, full.generated_ids[0], "snapkv+quest", {"read_budget": read, "page_size": 4}, budget)
    rec = cache.records[0]
    for layer in (2, 15, 29):
        evicted = rec.evicted_at[layer] == 0  # (kv_heads, capacity): evicted at prefill
        held = cache.layers[layer].positions  # (kv_heads, budget + 1)
        assert held.shape[1] == budget + 1
        read_pos = [torch.nonzero(row == 1).flatten() for row in rec.read_at[layer]]
        for h in range(KV):
            # three pages of 4 (the least Quest reads) of the 17 held: two full and the newest, the new token alone
            assert len(read_pos[h]) == 9 and not evicted[h, read_pos[h]].any()
            assert (P := len(ids)) in read_pos[h].tolist() and evicted[h, :P].sum() == P - budget
            assert set(read_pos[h].tolist()) <= set(held[h].tolist())


def test_quest_bytes_resident_read_and_summary_by_hand(smollm, ids):
    """Every entry stays resident; the prefill reads all P; a decode step with n = P + s held reads,
    in each of the 28 retrieving layers, two full pages of 4 and the newest (partial) page (Quest reads
    at least 3 pages); Quest's
    summary is a min and a max key per page, 16-bit. Saved and loaded, the trace keeps them."""
    trace = engine.run(smollm.model, smollm.tokenizer, ids, "quest", params={"read_budget": 8, "page_size": 4},
                       max_new_tokens=3, stop_at_eos=False)
    P, entry = len(ids), 2 * D * 4  # a key and a value of one KV head, float32
    assert trace.kv_bytes == [(P + s) * LAYERS * KV * entry for s in range(3)] == trace.kv_bytes_full
    newest = [(P + s) - 4 * ((P + s - 1) // 4) for s in range(3)]  # entries on the newest page
    assert trace.read_bytes == [P * LAYERS * KV * entry] + [
        (2 * (P + s) + 28 * (8 + newest[s])) * KV * entry for s in (1, 2)]
    assert trace.summary_bytes == [LAYERS * 2 * KV * -(-(P + s) // 4) * D * 2 for s in range(3)]
    # what each step read: nothing chosen at the prefill; at step s, every entry in layers 0-1 and
    # two pages of 4 + the newest page elsewhere, as many bytes as read_bytes says
    mask = trace.read_mask  # (steps, layers, kv_heads, positions)
    assert mask.shape == (3, LAYERS, KV, P + 3) and not mask[0].any()
    for s in (1, 2):
        assert (mask[s, :2].sum(-1) == P + s).all() and (mask[s, 2:].sum(-1) == 8 + newest[s]).all()
        assert mask[s, :, :, P + s - 1].all() and not mask[s, :, :, P + s:].any()  # the token itself, nothing later
        assert trace.read_bytes[s] == mask[s].sum() * entry
    states = [r.state for r in token_records(trace, 2, Scope(2, 0))]
    assert [p for p, st in enumerate(states) if st == "read"] == np.flatnonzero(mask[2, 2, 0]).tolist()
    assert set(states[:P + 2]) == {"read", "kept"}  # nothing evicted, nothing else protected
    again = type(trace).from_dict(trace.to_dict())
    assert (again.read_bytes, again.summary_bytes) == (trace.read_bytes, trace.summary_bytes)
    assert (again.read_mask == mask).all()


def test_sparq_lost_mass_is_the_attention_on_what_it_did_not_read(smollm, ids, full, qk):
    """With capture_queries, a retriever's lost mass at a decode step is the attention the step's
    query puts on the entries it did not read (mean over query heads), here recomputed in float64
    in layer 0 at step 1 from transformers' projections; nothing is lost at the prefill."""
    trace = engine.run(smollm.model, smollm.tokenizer, ids, "sparq", params={"read_budget": 10}, max_new_tokens=2,
                       stop_at_eos=False, capture_queries=True)
    assert trace.generated_ids[0] == full.generated_ids[0] and (trace.lost_mass[0] == 0).all()
    q, k = qk[0][0][:, -1:], qk[1][0]  # (9, 1, d), (3, P + 1, d)
    probs = grouped_softmax(q, k)[:, :, 0]  # (3, 3, P + 1)
    read = torch.from_numpy(trace.read_mask[1, 0, :, : k.shape[1]])  # (3, P + 1)
    want = (probs * ~read[:, None]).sum(-1).mean()
    assert 0.01 < want < 0.99
    assert abs(trace.lost_mass[1, 0] - want.item()) < 1e-5
