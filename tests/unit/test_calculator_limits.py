"""Configs are untrusted: every number is bounded before anything is sized by it, the bytes stay
exact at the bounds, and a config file's model gets a sensible name."""

import json
import time

import pytest

from kvviz.calculator import architectures as archs
from kvviz.calculator import memory as calc
from kvviz.calculator.memory import CalcError, Scenario

BASE = {"model_type": "llama", "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "hidden_size": 4096, "vocab_size": 128256, "intermediate_size": 14336}


@pytest.mark.parametrize("value", [1e30, 2**40, 10**7, 0, -3, 2.5, "32", True, [1], {"a": 1}, float("nan"), float("inf")])
def test_a_layer_count_out_of_bounds_is_refused_at_once_naming_the_field(value):
    start = time.perf_counter()
    with pytest.raises(CalcError, match="the config's num_hidden_layers must be a whole number from 1 to 1,024") as err:
        calc.architecture_from_config(BASE | {"num_hidden_layers": value})
    assert time.perf_counter() - start < 0.1
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_attention_heads", 4096, "num_attention_heads must be a whole number from 1 to 1,024"),
        ("head_dim", 10**6, "head_dim must be a whole number from 1 to 4,096"),
        ("sliding_window", 2**30, "sliding_window must be a whole number from 1 to 16,777,216"),
        ("max_window_layers", "x", None),  # read only for qwen2 with use_sliding_window: ignored here
    ],
)
def test_other_fields_are_bounded(field, value, message):
    if message is None:
        assert calc.architecture_from_config(BASE | {field: value}).layout.n_layers == 32
        return
    with pytest.raises(CalcError, match=message):
        calc.architecture_from_config(BASE | {field: value})


def test_the_parameter_count_refuses_nonsense_with_the_calculators_error():
    for field, value in (("vocab_size", 1e12), ("intermediate_size", "big"), ("num_local_experts", 10**9)):
        with pytest.raises(CalcError, match=field):
            calc.count_parameters(BASE | {field: value})
    # experts without any MLP width: a clear message, not a TypeError
    no_width = {k: v for k, v in BASE.items() if k != "intermediate_size"} | {"num_local_experts": 8}
    with pytest.raises(CalcError, match="moe_intermediate_size"):
        calc.count_parameters(no_width)
    # the estimate goes on without the weights, and says why
    est = calc.estimate(calc.architecture_from_config(BASE | {"vocab_size": -1}), Scenario(context=8))
    assert est.weights_bytes is None and any("vocab_size" in n for n in est.notes)


def test_bytes_are_exact_at_every_bound():
    # 1,024 layers x 1,024 KV heads (MHA) x 4,096 dims in fp32, 2^24 tokens, a batch of 2^16: 2^77 bytes,
    # beyond int64: by hand, 2 (K, V) x 2^10 x 2^10 x 2^12 x 4 bytes = 2^35 per token
    huge = {"num_hidden_layers": 1024, "num_attention_heads": 1024, "head_dim": 4096}
    arch = calc.architecture_from_config(huge)
    sc = Scenario(context=2**24, batch=2**16, dtype="fp32")
    est = calc.estimate(arch, sc)
    assert est.bytes_per_token == 2**35 and est.bytes_per_sequence == 2**59 and est.bytes_total == 2**75
    curve = calc.memory_curve(arch, sc, [1, 2**24, 2**26])
    assert list(curve) == [2**51, 2**75, 2**77]


@pytest.mark.parametrize(
    "scenario, message",
    [
        (dict(context=2**24 + 1), "context must be a positive whole number of tokens up to 16,777,216"),
        (dict(context=8, batch=2**16 + 1), "batch must be a positive whole number of sequences up to 65,536"),
        (dict(context=8, dtype="kivi-2", residual=2**25), "KIVI's residual window"),
        (dict(context=8, window=0), "the sliding window"),
        (dict(context=8, keep_ratio=float("nan")), "kept ratio"),
        (dict(context=8, dtype="int4", group_size=0), "group size"),
        (dict(context=8, dtype="int4\n"), r"unknown dtype 'int4\\n'"),
    ],
)
def test_scenarios_are_bounded(scenario, message):
    with pytest.raises(CalcError, match=message):
        calc.estimate(calc.get_architecture("llama-3.1-8b"), Scenario(**scenario))


def test_a_config_file_is_named_after_its_model(tmp_path):
    def name_of(relative, cfg):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cfg))
        return calc.architecture_from_file(path).name

    assert name_of("path/to/config.json", BASE) == "llama"  # not "to": the folder says nothing of the model
    assert name_of("Llama-3.1-8B/config.json", BASE) == "Llama-3.1-8B"  # the folder names a llama
    assert name_of("x/config.json", BASE | {"_name_or_path": "meta-llama/Llama-3.1-8B"}) == "meta-llama/Llama-3.1-8B"
    assert name_of("x/config.json", BASE | {"_name_or_path": "/fsx/runs/ckpt/my-llama"}) == "ckpt/my-llama"
    snapshot = "hub/models--Qwen--Qwen2.5-7B/snapshots/a09a35458c702b33eeacc393d103063234e8bc28/config.json"
    assert name_of(snapshot, BASE | {"_name_or_path": "/somewhere/else"}) == "Qwen/Qwen2.5-7B"
    assert name_of("mine.json", {k: v for k, v in BASE.items() if k != "model_type"}) == "mine"


def test_files_that_are_not_configs(tmp_path):
    big = tmp_path / "config.json"
    big.write_bytes(b" " * (archs.MAX_CONFIG_BYTES + 1))
    with pytest.raises(CalcError, match="larger than a config.json"):
        calc.architecture_from_file(big)
    big.write_bytes(b"\xff\xfe{}")
    with pytest.raises(CalcError, match="not UTF-8"):
        calc.architecture_from_file(big)
    with pytest.raises(CalcError, match="nested too deeply"):
        calc.architecture_from_json_text("[" * 100_000)
    with pytest.raises(CalcError, match="cannot read"):
        calc.architecture_from_file(tmp_path)
