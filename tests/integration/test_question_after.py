"""Query-agnostic runs (``question_at``): the policy compresses the context alone, then the
question is appended. Checked on the embedded SmolLM2 against a run of the context alone (the
kept set), and against transformers decoding the question from a DynamicCache that holds only
the kept context entries (the first token's log-probabilities).
"""

from __future__ import annotations

import pytest
import torch

from kvviz.record.examples import passkey_prompt
from kvviz.record.question import question_start, question_text
from kvviz.record.text import PromptError, encode_prompt
from kvviz.runtime import engine

B = 24


@pytest.fixture(scope="module")
def prompt(smollm):
    text, _ = passkey_prompt(40, 0.5)
    ids = encode_prompt(smollm.tokenizer, text, chat=True)
    return text, ids, question_start(smollm.tokenizer, ids, text)


def test_the_question_is_the_last_paragraph(smollm, prompt):
    text, ids, q = prompt
    assert question_text(text) == "What is the pass key? Answer with the number."
    assert smollm.tokenizer.decode(ids[q:]).startswith("What is the pass key?")
    assert not smollm.tokenizer.decode(ids[q - 1 :]).startswith("What")
    with pytest.raises(PromptError, match="last paragraph"):
        question_start(smollm.tokenizer, ids, "no blank line here")


def test_context_first_keeps_what_the_context_alone_keeps(smollm, prompt):
    from transformers import DynamicCache

    _, ids, q = prompt
    model, tok, P = smollm.model, smollm.tokenizer, len(ids)
    after = engine.run(model, tok, ids, "snapkv", budget=B, question_at=q, max_new_tokens=1, stop_at_eos=False, keep_logprobs=True)
    alone = engine.run(model, tok, ids[:q], "snapkv", budget=B, max_new_tokens=1, stop_at_eos=False)
    seen = engine.run(model, tok, ids, "snapkv", budget=B, max_new_tokens=1, stop_at_eos=False)
    n_layers, kv = after.n_layers, after.n_kv_heads
    differs = 0
    for layer in range(n_layers):
        for h in range(kv):
            kept = after.kept_positions(0, layer, h).tolist()
            context = alone.kept_positions(0, layer, h).tolist()
            assert kept == context + list(range(q, P))  # the context as compressed alone, the question whole
            differs += context != seen.kept_positions(0, layer, h).tolist()[: len(context)]
    assert differs  # with the question in view SnapKV keeps other context entries
    # the first token: transformers reads the question over the kept context entries only
    kw = engine.cache_keyword(model)
    with torch.inference_mode():
        full = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids[:q]]), use_cache=True, **{kw: full})
        kept = DynamicCache(config=model.config)
        for layer in range(n_layers):
            idx = torch.tensor([alone.kept_positions(0, layer, h).tolist() for h in range(kv)])[None, :, :, None]
            k, v = full.layers[layer].keys, full.layers[layer].values
            kept.update(k.gather(2, idx.expand(-1, -1, -1, k.shape[-1])), v.gather(2, idx.expand(-1, -1, -1, v.shape[-1])), layer)
        out = model(input_ids=torch.tensor([ids[q:]]), position_ids=torch.arange(q, P)[None], use_cache=True, **{kw: kept})
    reference = out.logits[0, -1].float().log_softmax(-1)
    torch.testing.assert_close(after.extra["logprobs"][0], reference, atol=2e-4, rtol=0)
    assert after.extra["question_at"] == q


def test_a_question_must_leave_a_context(smollm, prompt):
    _, ids, _ = prompt
    with pytest.raises(ValueError, match="question starts"):
        engine.run(smollm.model, smollm.tokenizer, ids, "full", question_at=len(ids), max_new_tokens=1)


def test_compare_runs_each_policy_before_its_question(smollm, prompt):
    from kvviz.compare import run as comparison
    from kvviz.policies.spec import PolicySpec
    from kvviz.runs.bundle import RunSettings

    text, ids, q = prompt
    specs = [PolicySpec.parse(f"snapkv:budget={B}"), PolicySpec.parse(f"window:budget={B}")]
    settings = RunSettings("SmolLM2", "passkey", text, True, specs, 1, question_after=True)
    assert comparison.prepare(smollm.tokenizer, settings) == ids
    result = comparison.compare(smollm.model, smollm.tokenizer, ids, settings)
    for run in result.runs:
        assert run.trace.extra["question_at"] == q and run.forced.extra["question_at"] == q
        assert set(range(q, len(ids))) <= set(run.trace.kept_positions(0, 0, 0).tolist()) or run.spec.name == "window"
    assert RunSettings.from_dict(settings.to_dict()).question_after
    no_question = RunSettings("SmolLM2", "custom", "no blank line here, " * 20, False, specs, 1, question_after=True)
    with pytest.raises(PromptError, match="last paragraph"):
        comparison.prepare(smollm.tokenizer, no_question)
