"""The engine and PolicyCache on the embedded SmolLM2 (CPU)."""

import threading

import numpy as np
import pytest
import torch

from kvviz.runtime import comparison, engine
from kvviz.policies import PolicyError
from kvviz.record.text import PromptError, encode_prompt

STORY = "Write two sentences about a lighthouse keeper who finds a message in a bottle."


@pytest.fixture(scope="module")
def chat_ids(smollm):
    return encode_prompt(smollm.tokenizer, STORY, chat=True)


def bytes_per_token(loaded):
    return loaded.summary.kv_bytes_per_token


def test_full_matches_transformers_generate(smollm, chat_ids):
    trace = engine.run(smollm.model, smollm.tokenizer, chat_ids, "full", max_new_tokens=24, stop_at_eos=False)
    ref = smollm.model.generate(torch.tensor([chat_ids]), max_new_tokens=24, min_new_tokens=24, do_sample=False)
    assert trace.generated_ids == ref[0, len(chat_ids):].tolist()
    assert (trace.evicted_at_step == -1).all()
    # a full cache holds every token it has seen
    assert trace.kv_bytes == trace.kv_bytes_full


def test_window_keeps_exactly_the_last_n(smollm, chat_ids):
    n = 20
    trace = engine.run(smollm.model, smollm.tokenizer, chat_ids, "window", budget=n, max_new_tokens=8, stop_at_eos=False)
    P = len(chat_ids)
    for step in range(trace.n_steps):
        seen = P + step
        expected = list(range(seen - n, seen))
        for layer in (0, 14, 29):
            for head in range(3):
                assert trace.kept_positions(step, layer, head).tolist() == expected
    assert trace.kv_bytes[0] == n * bytes_per_token(smollm)


def test_kv_bytes_fall_with_eviction_and_match_the_budget(smollm, chat_ids):
    budget = 32
    trace = engine.run(smollm.model, smollm.tokenizer, chat_ids, "h2o:recent=16", budget=budget, max_new_tokens=6, stop_at_eos=False)
    assert trace.kv_bytes_full[0] == len(chat_ids) * bytes_per_token(smollm)
    assert all(b == budget * bytes_per_token(smollm) for b in trace.kv_bytes)
    assert trace.kv_bytes[-1] < trace.kv_bytes_full[-1]
    # H2O keeps its recent window and evicts one entry per decode step
    last = trace.n_steps - 1
    kept = trace.kept_positions(last, 5, 0)
    assert len(kept) == budget
    assert set(range(len(chat_ids) + last - 16, len(chat_ids) + last)) <= set(kept.tolist())


def test_snapkv_keeps_the_observation_window_and_every_generated_token(smollm, chat_ids):
    trace = engine.run(
        smollm.model, smollm.tokenizer, chat_ids, "snapkv", params={"window": 8}, budget=24, max_new_tokens=6, stop_at_eos=False
    )
    P = len(chat_ids)
    for layer in range(trace.n_layers):
        for head in range(trace.n_kv_heads):
            kept = trace.kept_positions(trace.n_steps - 1, layer, head)
            assert set(range(P - 8, P + trace.n_steps - 1)) <= set(kept.tolist())
            assert len(kept) == 24 + trace.n_steps - 1
    # heads choose differently: SnapKV selects per KV head
    picks = {tuple(trace.kept_positions(0, l, h)) for l in range(trace.n_layers) for h in range(3)}
    assert len(picks) > 1


def test_a_run_leaves_no_hooks_on_the_model(smollm, chat_ids):
    def hooks():
        return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in smollm.model.modules())

    before = hooks()
    engine.run(smollm.model, smollm.tokenizer, chat_ids, "h2o", budget=16, max_new_tokens=2)

    def boom():
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError):
        engine.run(smollm.model, smollm.tokenizer, chat_ids, "h2o", budget=16, max_new_tokens=4, should_stop=boom)
    assert hooks() == before


def test_two_threads_on_one_model_match_sequential_runs(smollm, chat_ids):
    jobs = [("h2o", 20), ("snapkv", 24)]
    sequential = [
        engine.run(smollm.model, smollm.tokenizer, chat_ids, p, budget=b, max_new_tokens=8, stop_at_eos=False)
        for p, b in jobs
    ]
    results = [None, None]

    def work(i):
        p, b = jobs[i]
        results[i] = engine.run(smollm.model, smollm.tokenizer, chat_ids, p, budget=b, max_new_tokens=8, stop_at_eos=False)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seq, par in zip(sequential, results):
        assert par.generated_ids == seq.generated_ids
        np.testing.assert_array_equal(par.evicted_at_step, seq.evicted_at_step)


def test_teacher_forced_perplexity_and_kl_against_full(smollm, chat_ids):
    cmp = comparison.against_full(smollm.model, smollm.tokenizer, chat_ids, "window", budget=12, max_new_tokens=10)
    assert cmp.forced.generated_ids == cmp.full.generated_ids
    assert cmp.forced.kl_to_reference.shape == (cmp.full.n_steps,)
    assert cmp.forced.kl_to_reference.max() > 0.01  # a 12-token window changes the distribution
    full_forced = engine.run(
        smollm.model, smollm.tokenizer, chat_ids, "full", forced_ids=cmp.full.generated_ids
    )
    assert engine.perplexity(full_forced) < engine.perplexity(cmp.forced)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"policy": "h2o", "budget": 0}, "budget"),
        ({"policy": "h2o", "budget": 10_000}, "larger than the prompt"),
        ({"policy": "nope"}, "Unknown policy"),
        ({"policy": "h2o", "params": {"colour": 1}}, "Unknown parameter"),
    ],
)
def test_bad_policy_input_names_the_problem(smollm, chat_ids, kwargs, message):
    with pytest.raises(PolicyError, match=message):
        engine.run(smollm.model, smollm.tokenizer, chat_ids, max_new_tokens=2, **kwargs)


def test_bad_prompts_name_the_problem(smollm):
    with pytest.raises(PromptError, match="empty"):
        encode_prompt(smollm.tokenizer, "   ")
    with pytest.raises(PromptError, match="context"):
        encode_prompt(smollm.tokenizer, "word " * 9000, max_context=smollm.summary.max_context)
    with pytest.raises(PromptError, match="context"):
        engine.run(smollm.model, smollm.tokenizer, [1] * 8190, "full", max_new_tokens=8)


def test_trace_round_trips_through_json_and_npz(smollm, chat_ids, tmp_path):
    from kvviz.record.trace import Trace

    trace = engine.run(smollm.model, smollm.tokenizer, chat_ids, "h2o", budget=16, max_new_tokens=4)
    for name in ("t.json", "t.npz"):
        back = Trace.load(trace.save(tmp_path / name))
        assert back.generated_ids == trace.generated_ids
        np.testing.assert_array_equal(back.evicted_at_step, trace.evicted_at_step)
        np.testing.assert_allclose(back.topk_probs, trace.topk_probs)
        assert back.kept_positions(2, 3, 1).tolist() == trace.kept_positions(2, 3, 1).tolist()
