"""A teacher-forced continuation read in chunks (``kvviz.runtime.forced_chunks``), where the cache
evicts nothing after the prompt: the full cache's equals transformers' own forward over the whole
text; a prompt-only selector's equals its step-by-step run (the same entries, rounded as larger
products), with the same byte records, evictions and events, and so does per-token quantization;
anything that decides at decode, or holds tokens in groups, steps as before."""

import numpy as np
import pytest
import torch

from kvviz.record.text import encode_prompt
from kvviz.runtime import engine, forced_chunks
from kvviz.runtime.engine import DecodeOptions

NEW = 20


@pytest.fixture(scope="module")
def ids(smollm):
    return encode_prompt(smollm.tokenizer, "Tell me about the lighthouse keeper and the map he found. " * 3, chat=True)


@pytest.fixture(scope="module")
def forced(smollm, ids):
    return engine.run(smollm.model, smollm.tokenizer, ids, "full", max_new_tokens=NEW, stop_at_eos=False).generated_ids


def test_the_full_caches_chunks_equal_transformers_forward_over_the_whole_text(smollm, ids, forced):
    m, tok = smollm.model, smollm.tokenizer
    trace = engine.run(m, tok, ids, "full", forced_ids=forced, keep_logprobs=True, forced_chunk=8)
    assert trace.timings["decode_path"] == "chunked" and trace.generated_ids == forced
    with torch.inference_mode():
        logits = m(input_ids=torch.tensor([ids + forced[:-1]])).logits[0, len(ids) - 1 :]
    expected = logits.double().log_softmax(-1)
    got = trace.extra["logprobs"].double()
    assert got.shape == expected.shape == (NEW, m.config.vocab_size)
    assert float((got - expected).abs().max()) < 2e-4
    # every step's full-cache bytes: the prompt and the tokens before it, by hand
    per_token = 2 * m.config.num_hidden_layers * m.config.num_key_value_heads * (m.config.hidden_size // m.config.num_attention_heads) * 4
    assert trace.kv_bytes == trace.kv_bytes_full == [(len(ids) + s) * per_token for s in range(NEW)]


@pytest.mark.parametrize("spec", ["snapkv:budget=24", "pyramidkv:budget=24", "full", "quant", "snapkv+quant:budget=24,bits=2"])
@pytest.mark.parametrize("chunk", [256, 3])  # one forward; several, the last one short
def test_a_prompt_only_policys_chunks_equal_its_steps(smollm, ids, forced, spec, chunk):
    m, tok = smollm.model, smollm.tokenizer
    heard = {c: [] for c in (0, chunk)}
    runs = {
        c: engine.run(m, tok, ids, spec, forced_ids=forced, keep_logprobs=True, forced_chunk=c, capture_queries=True,
                      on_step=lambda e, c=c: heard[c].append((e.step, e.token_id, e.kv_bytes, e.kv_bytes_full, e.held_entries)))
        for c in (0, chunk)
    }
    stepped, chunked = runs[0], runs[chunk]
    assert stepped.timings["decode_path"] == "eager" and chunked.timings["decode_path"] == "chunked"
    assert chunked.generated_ids == stepped.generated_ids == forced
    assert chunked.kv_bytes == stepped.kv_bytes and chunked.bookkeeping_bytes == stepped.bookkeeping_bytes
    assert chunked.kv_bytes_full == stepped.kv_bytes_full
    if stepped.store_error is not None:  # per-token quantization: the same codes, errors summed in another order
        np.testing.assert_allclose(chunked.store_error.key, stepped.store_error.key, rtol=1e-4)
        np.testing.assert_allclose(chunked.store_error.value, stepped.store_error.value, rtol=1e-4)
    np.testing.assert_array_equal(chunked.evicted_at_step, stepped.evicted_at_step)
    np.testing.assert_array_equal(chunked.scores, stepped.scores)
    np.testing.assert_allclose(chunked.lost_mass, stepped.lost_mass, atol=1e-6)  # the prompt's at step 0, none after
    assert float((chunked.extra["logprobs"] - stepped.extra["logprobs"]).abs().max()) < 2e-4
    assert heard[chunk] == heard[0]
    assert len(chunked.timings["step_s"]) == NEW and chunked.stopped_by == "max_new_tokens"
    if spec.startswith(("snapkv", "pyramidkv")):
        assert (stepped.evicted_at_step[..., : len(ids)] >= 0).any()  # the prompt was compressed
        assert stepped.lost_mass[0].max() > 0 and not stepped.lost_mass[1:].any()


def why(smollm, ids, spec: str, **options) -> str | None:
    """Why a forced run of ``spec`` steps (None: it reads its continuation in chunks), after the prefill."""
    from kvviz.model import devices
    from kvviz.policies.spec import PolicySpec
    from kvviz.runtime.policy_cache import PolicyCache

    m, shape = smollm.model, engine.ModelShape.of(smollm.model)
    cache = PolicyCache(PolicySpec.of(spec).pipeline(), shape.n_layers, len(ids), len(ids) + 4, shape.n_kv_heads,
                        devices.run_devices(m)[1:])
    with torch.inference_mode(), cache.attached(m):
        engine.prefill(m, cache, ids)
    return forced_chunks.why_not(cache, DecodeOptions(**{"forced_ids": (1, 2), **options}))


@pytest.mark.parametrize("spec, reason", [
    ("h2o:budget=6", "its selector evicts at decode"),
    ("kivi", "its store does not hold each token on its own"),  # a key waits in full precision for its group
    ("quant:axis=per_channel", "its store does not hold each token on its own"),
    ("lowrank", "its store does not hold each token on its own"),  # not claimed: it steps
    ("quest:read_budget=16", "a retriever picks what each step reads"),
])
def test_what_decides_at_decode_steps(smollm, ids, forced, spec, reason):
    trace = engine.run(smollm.model, smollm.tokenizer, ids, spec, forced_ids=forced[:4])
    assert trace.timings["decode_path"] == "eager"
    assert why(smollm, ids, spec) == reason


def test_other_runs_step(smollm, ids):
    assert why(smollm, ids, "snapkv:budget=4") is None and why(smollm, ids, "quant") is None
    assert why(smollm, ids, "snapkv:budget=4", forced_ids=None) == "not teacher-forced on given tokens"
    assert why(smollm, ids, "snapkv:budget=4", forced_chunk=1) == "asked for step by step"
    assert why(smollm, ids, "snapkv:budget=4", capture_queries=True) is None


def test_a_stop_ends_the_run_between_chunks(smollm, ids, forced):
    heard = []
    trace = engine.run(smollm.model, smollm.tokenizer, ids, "snapkv:budget=24", forced_ids=forced, forced_chunk=5,
                       on_step=lambda e: heard.append(e.step), should_stop=lambda: len(heard) > 1)  # after the first chunk
    assert trace.stopped_by == "user"
    assert trace.generated_ids == forced[:6] and len(trace.kv_bytes) == 6  # step 0 and the first chunk's five


def test_the_live_page_names_a_forced_run_read_in_chunks(smollm):
    from kvviz.live.job import LiveJob
    from kvviz.live.run import CHUNKED, LiveRequest
    from kvviz.policies.spec import PolicySpec

    ids = encode_prompt(smollm.tokenizer, "Name three colours of the rainbow.", chat=True)

    def live(policy: str):
        job = LiveJob(smollm.model, smollm.tokenizer, LiveRequest(spec=PolicySpec.of(policy), max_new_tokens=8, prompt_ids=list(ids))).start()
        assert job.wait(600)
        return job.result

    snapkv, h2o = live("snapkv:budget=12"), live("h2o:budget=12")
    assert not snapkv.forced.extra.get("forced_from_free_run")  # snapkv left the full cache's tokens: a forced run ran
    assert CHUNKED in snapkv.wall_s and "forced" not in snapkv.wall_s and snapkv.forced.timings["decode_path"] == "chunked"
    assert "forced" in h2o.wall_s and CHUNKED not in h2o.wall_s


def test_the_sweep_estimates_prediction_matches_every_policys_run(tiny_llama):
    """``reads_in_chunks`` (asked of a spec before any run, for the Tradeoffs estimate) says what the
    engine then does, for every registered policy with its defaults."""
    from kvviz import policies
    from kvviz.policies import PolicyError
    from kvviz.policies.spec import PolicySpec

    from tests.unit.tiny_comparison import PROMPT as prompt, Tok

    seen = {}
    for name in sorted(policies.registry()):
        spec = PolicySpec.of(name, ratio=0.5) if policies.takes_budget(name) else PolicySpec.of(name)
        try:
            trace = engine.run(tiny_llama, Tok(), prompt, spec, forced_ids=[5, 6, 7, 8])
        except PolicyError:
            continue  # a policy that refuses this tiny model (its own test covers it)
        seen[name] = trace.timings["decode_path"] == "chunked"
        assert seen[name] == forced_chunks.reads_in_chunks(spec.pipeline()), name
    assert seen["full"] and seen["snapkv"] and seen["quant"] and not seen["h2o"] and not seen["kivi"]
    assert len(seen) >= 25
