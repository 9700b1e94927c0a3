"""The calculator's figures for the embedded SmolLM2 equal the bytes its real cache held in kvviz runs."""

import pytest

from kvviz.calculator import memory as calc
from kvviz.runtime import engine
from kvviz.calculator.memory import Scenario
from kvviz.record.text import encode_prompt

PROMPT = "The key-value cache stores one key and one value vector per layer for every token the model has read."


@pytest.fixture(scope="module")
def setup(smollm):
    ids = encode_prompt(smollm.tokenizer, PROMPT)
    arch = calc.architecture_from_config(smollm.model.config.to_dict(), name="embedded")
    return ids, arch


def held_at_each_step(trace):
    """Tokens in a full cache at each step: the prompt, then one more per generated token."""
    return [trace.prompt_len + s for s in range(len(trace.kv_bytes))]


def test_the_embedded_model_matches_the_bundled_table(smollm, setup):
    _, arch = setup
    assert arch.layout == calc.get_architecture("smollm2-135m").layout
    assert arch.params == sum(p.numel() for p in smollm.model.parameters())


def test_full_cache_bytes_equal_a_real_run(smollm, setup):
    ids, arch = setup
    trace = engine.run(smollm.model, smollm.tokenizer, ids, "full", max_new_tokens=4, stop_at_eos=False)
    assert trace.dtype == "float32"
    expected = [calc.estimate(arch, Scenario(context=n, dtype="fp32")).bytes_per_sequence for n in held_at_each_step(trace)]
    assert trace.kv_bytes == expected
    assert expected[0] == len(ids) * 2 * 30 * 3 * 64 * 4  # by hand: K and V, 30 layers, 3 KV heads, 64 dims, fp32


def test_int4_store_bytes_equal_a_real_quant_run(smollm, setup):
    ids, arch = setup
    trace = engine.run(
        smollm.model, smollm.tokenizer, ids, "quant", params={"bits": 4, "group_size": 32, "axis": "per_token"},
        max_new_tokens=3, stop_at_eos=False,
    )
    # the store keeps its scales and zero points in the model's dtype: fp32 here, so s = 4 bytes
    sc = dict(dtype="int4", group_size=32, full_bytes=4)
    assert trace.kv_bytes == [calc.estimate(arch, Scenario(context=n, **sc)).bytes_per_sequence for n in held_at_each_step(trace)]


def test_kivi_bytes_equal_a_real_kivi_run(smollm, setup):
    ids, arch = setup
    assert len(ids) > 16
    trace = engine.run(
        smollm.model, smollm.tokenizer, ids, "kivi", params={"bits": 2, "residual": 8, "group_size": 32},
        max_new_tokens=10, stop_at_eos=False,
    )
    sc = dict(dtype="kivi-2", residual=8, group_size=32, full_bytes=4)
    assert trace.kv_bytes == [calc.estimate(arch, Scenario(context=n, **sc)).bytes_per_sequence for n in held_at_each_step(trace)]


def test_a_kept_ratio_equals_a_real_window_run(smollm, setup):
    ids, arch = setup
    trace = engine.run(smollm.model, smollm.tokenizer, ids, "window", ratio=0.5, max_new_tokens=2, stop_at_eos=False)
    assert trace.kv_bytes[0] == calc.estimate(arch, Scenario(context=len(ids), dtype="fp32", keep_ratio=0.5)).bytes_per_sequence
