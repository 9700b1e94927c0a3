"""Recall of the true top-k (issue 27): the share of the k entries a step's full attention weighs
most (k = the entries read) that a retriever's read set holds, mean over KV heads. By hand on a
small case, then in a real SparQ run on the embedded SmolLM2 against a float64 recomputation from
transformers' projections (layer 0, step 1, whose query does not depend on what was read)."""

from __future__ import annotations

import numpy as np
import torch
from tests.references import grouped_softmax, projections

from kvviz.policies.recall import topk_recall
from kvviz.record.text import encode_prompt
from kvviz.record.trace import Trace
from kvviz.runtime import engine

TEXT = "The lighthouse keeper climbed the stairs every evening to light the lamp, and found a letter."


def test_recall_by_hand():
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
    # head 0: true top-2 {0, 1}, read {0, 2}: 1 of 2; head 1: true top-2 {3, 2}, read {2, 3}: 2 of 2
    read = torch.tensor([[0, 2], [2, 3]])
    assert topk_recall(probs, read).item() == 0.75
    assert topk_recall(probs, torch.tensor([[2, 3], [0, 1]])).item() == 0.0
    assert topk_recall(probs, torch.arange(4).expand(2, 4)).item() == 1.0  # everything read


def test_sparq_recall_is_the_float64_top_k_share(smollm, tmp_path):
    ids = encode_prompt(smollm.tokenizer, TEXT)
    budget = 8
    trace = engine.run(smollm.model, smollm.tokenizer, ids, "sparq", params={"read_budget": budget}, max_new_tokens=2,
                       stop_at_eos=False, capture_queries=True)
    assert trace.recall is not None and trace.recall.shape == (2, 30)
    assert np.isnan(trace.recall[0]).all()  # the prefill reads everything: nothing chosen
    qs, ks = projections(smollm.model, ids + trace.generated_ids[:1])
    q, k = qs[0][:, -1:], ks[0]  # (9, 1, d), (3, n, d)
    probs = grouped_softmax(q, k)[:, :, 0].mean(1)  # (3, n): the group's mean weights
    read = torch.from_numpy(trace.read_mask[1, 0, :, : k.shape[1]])  # (3, n) bool
    top = probs.topk(budget, dim=-1).indices
    want = np.mean([read[h, top[h]].double().mean().item() for h in range(3)])
    assert 0 < want < 1
    assert abs(trace.recall[1, 0] - want) < 1e-6
    for name in ("t.npz", "t.json"):  # carried through a saved trace
        np.testing.assert_array_equal(Trace.load(trace.save(tmp_path / name)).recall, trace.recall)
