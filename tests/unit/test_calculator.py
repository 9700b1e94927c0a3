"""The KV memory calculator against hand arithmetic, published numbers and transformers' own configs."""

import json

import pytest

from kvviz.calculator import architectures
from kvviz.calculator import memory as calc
from kvviz.calculator.memory import CalcError, Scenario


def bytes_of(name, **scenario):
    return calc.estimate(calc.get_architecture(name), Scenario(**scenario))


def test_the_seeds_example_to_the_byte():
    # Llama-2-7B, 4,096 tokens, fp16: 2 (K, V) x 32 layers x 4,096 tokens x 4,096 (32 heads x 128) x 2 bytes
    est = bytes_of("llama-2-7b", context=4096, dtype="fp16")
    assert est.bytes_per_sequence == 2 * 32 * 4096 * 4096 * 2 == 2_147_483_648
    assert est.attention == "MHA"
    assert "2,147,483,648" in est.formulas["per_sequence"]


def test_gqa_against_mha_per_token_by_hand():
    mha = bytes_of("llama-2-7b", context=1, dtype="bf16").bytes_per_token
    gqa = bytes_of("llama-3.1-8b", context=1, dtype="bf16").bytes_per_token
    assert mha == 2 * 32 * 32 * 128 * 2 == 524_288  # 32 KV heads
    assert gqa == 2 * 32 * 8 * 128 * 2 == 131_072  # 8 KV heads shared by 32 query heads
    assert mha / gqa == 32 / 8
    assert calc.get_architecture("llama-3.1-8b").layout.attention == "GQA"
    # Llama-2-70B keeps 8 KV heads for 64 query heads: 80 layers x 8 x 128 x 2 x 2 bytes
    assert bytes_of("llama-2-70b", context=1).bytes_per_token == 2 * 80 * 8 * 128 * 2


def test_mqa_caches_one_kv_head():
    est = bytes_of("gemma-2b", context=1)
    assert est.attention == "MQA"
    assert est.bytes_per_token == 2 * 18 * 1 * 256 * 2


def test_mla_per_token_for_deepseek_v2_from_its_published_config():
    est = bytes_of("deepseek-v2", context=1000, dtype="bf16")
    assert est.attention == "MLA"
    assert est.bytes_per_token == (512 + 64) * 60 * 2 == 69_120
    assert est.bytes_per_sequence == 69_120 * 1000
    # the DeepSeek-V2 paper (Table 1): MLA's cache equals GQA with 2.25 groups of d_h = 128
    assert (512 + 64) == 2 * 2.25 * 128
    assert bytes_of("deepseek-v3", context=1).bytes_per_token == (512 + 64) * 61 * 2


def test_gemma2_sliding_layers_by_hand():
    # 42 layers alternate: 21 sliding (even) hold at most 4,096 tokens, 21 full hold everything;
    # per token and layer: 2 x 8 KV heads x 256 x 2 bytes = 8,192 bytes
    per_layer_token = 2 * 8 * 256 * 2
    assert bytes_of("gemma-2-9b", context=8192).bytes_per_sequence == (21 * 8192 + 21 * 4096) * per_layer_token
    assert bytes_of("gemma-2-9b", context=3000).bytes_per_sequence == 42 * 3000 * per_layer_token
    windows = calc.get_architecture("gemma-2-9b").layout.windows
    assert windows[0] == 4096 and windows[1] is None and sum(w is not None for w in windows) == 21


@pytest.mark.parametrize("name", sorted(calc.bundled()))
def test_sliding_layers_and_kv_heads_as_transformers_reads_the_config(name):
    """transformers itself decides which layers of its cache slide: our reading must agree."""
    transformers = pytest.importorskip("transformers")
    from transformers.cache_utils import DynamicCache, DynamicSlidingWindowLayer

    arch = calc.get_architecture(name)
    config = transformers.AutoConfig.for_model(**arch.config)
    cache = DynamicCache(config=config)
    expected = [layer.sliding_window if isinstance(layer, DynamicSlidingWindowLayer) else None for layer in cache.layers]
    assert list(arch.layout.windows) == expected
    if arch.layout.attention != "MLA":
        assert arch.layout.n_kv_heads == config.num_key_value_heads
        assert arch.layout.head_dim == getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def test_int4_and_int2_overhead_by_hand():
    # Llama-3.1-8B, group 32, fp16 scale and zero point: a 128-dim vector is 128 x 4 / 8 = 64 bytes of
    # codes plus 4 groups x 2 x 2 bytes = 16 bytes, i.e. 0.625 bytes per element
    int4 = bytes_of("llama-3.1-8b", context=1000, dtype="int4", group_size=32)
    assert int4.bytes_per_token == 2 * 32 * 8 * (64 + 16) == 40_960
    assert int4.bytes_per_sequence == 40_960 * 1000
    int2 = bytes_of("llama-3.1-8b", context=1000, dtype="int2", group_size=32)
    assert int2.bytes_per_token == 2 * 32 * 8 * (32 + 16)
    int4_g128 = bytes_of("llama-3.1-8b", context=1, dtype="int4", group_size=128)
    assert int4_g128.bytes_per_token == 2 * 32 * 8 * (64 + 1 * 2 * 2)
    symmetric_free = bytes_of("llama-3.1-8b", context=1, dtype="fp8")
    assert symmetric_free.bytes_per_token == 2 * 32 * 8 * 128


def test_kivi_bytes_by_hand():
    # Llama-3.1-8B, KIVI-2, R = 128, G = 32, 300 tokens, per layer and KV head:
    #   keys: 256 tokens (2 x R) in 8 groups of G = 32, per channel: codes 256 x 128 x 2 / 8, scale
    #         + zero per channel per group 8 x 128 x 2 x 2; 44 tokens in fp16: 44 x 128 x 2
    #   values: 172 tokens per token: 172 x (32 + 4 x 2 x 2); the 128 newest in fp16: 128 x 128 x 2
    keys = 256 * 128 * 2 // 8 + 8 * 128 * 2 * 2 + 44 * 128 * 2
    values = 172 * (32 + 16) + 128 * 128 * 2
    est = bytes_of("llama-3.1-8b", context=300, dtype="kivi-2", residual=128, group_size=32)
    assert est.bytes_per_sequence == 32 * 8 * (keys + values)


def test_policy_ratio_and_window_what_ifs():
    full = bytes_of("llama-3.1-8b", context=10_000).bytes_per_sequence
    assert bytes_of("llama-3.1-8b", context=10_000, keep_ratio=0.25).bytes_per_sequence == full // 4
    assert bytes_of("llama-3.1-8b", context=10_000, window=1000).bytes_per_sequence == full // 10
    assert bytes_of("llama-3.1-8b", context=3, keep_ratio=0.1).bytes_per_sequence == 131_072  # at least one token


# published parameter counts (Hugging Face safetensors totals, model cards, papers)
EXACT_PARAMS = {
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "mistral-7b": 7_241_732_096,
    "mixtral-8x7b": 46_702_792_704,
    "gemma-2-9b": 9_241_705_984,
    "smollm2-135m": 134_515_008,
}
ROUNDED_PARAMS = {
    "llama-3.1-405b": 405e9,
    "qwen2.5-7b": 7.61e9,
    "qwen2.5-72b": 72.7e9,
    "gemma-2b": 2.51e9,
    "deepseek-v2": 236e9,
    "deepseek-v3": 671e9,
    "phi-3-mini": 3.82e9,
    "smollm2-360m": 362e6,
    "smollm2-1.7b": 1.71e9,
}


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_parameter_count_equals_the_published_count(name):
    assert calc.get_architecture(name).params == EXACT_PARAMS[name]


@pytest.mark.parametrize("name", sorted(ROUNDED_PARAMS))
def test_parameter_count_within_one_percent_of_the_published_size(name):
    assert calc.get_architecture(name).params == pytest.approx(ROUNDED_PARAMS[name], rel=0.01)


def test_sequences_that_fit_on_a_gpu_by_hand():
    arch = calc.get_architecture("llama-3.1-8b")
    est = calc.estimate(arch, Scenario(context=32_768), gpu="h100", weights_dtype="bf16", utilization=0.9)
    usable = int(81_559 * 2**20 * 0.9)
    per_sequence = 32_768 * 2 * 32 * 8 * 128 * 2
    assert est.weights_bytes == 2 * 8_030_261_248
    assert est.max_sequences == (usable - 2 * 8_030_261_248) // per_sequence == 14
    # 70B in bf16 weights does not fit on one H100 at all
    big = calc.estimate(calc.get_architecture("llama-3.1-70b"), Scenario(context=32_768), gpu="h100")
    assert big.max_sequences == 0 and big.weights_fit is False and est.weights_fit is True


def test_the_70b_question_with_kivi():
    """How many 32k-token requests fit on one H100 with Llama-3.1-70B (int4 weights), and with KIVI-2?"""
    arch = calc.get_architecture("llama-3.1-70b")
    bf16 = calc.estimate(arch, Scenario(context=32_768), gpu="h100", weights_dtype="int4")
    kivi = calc.estimate(arch, Scenario(context=32_768, dtype="kivi-2"), gpu="h100", weights_dtype="int4")
    budget = int(81_559 * 2**20 * 0.9) - int(70_553_706_496 * (0.5 + 4 / 128))
    assert bf16.max_sequences == budget // (32_768 * 327_680) == 3
    assert kivi.max_sequences > 5 * bf16.max_sequences


def test_memory_curve_matches_the_estimates():
    arch = calc.get_architecture("gemma-2-9b")
    sc = Scenario(context=1, batch=3, dtype="int4")
    contexts = [1, 4096, 5000, 8192]
    curve = calc.memory_curve(arch, sc, contexts)
    for n, value in zip(contexts, curve):
        assert value == calc.estimate(arch, Scenario(context=n, batch=3, dtype="int4")).bytes_total


def test_json_names_the_fields_and_the_gpu_only_when_given():
    d = bytes_of("llama-2-7b", context=10).to_dict()
    assert {"arch", "attention", "bytes_per_token", "bytes_per_sequence", "bytes_total", "formulas"} <= set(d)
    assert "max_sequences" not in d
    with_gpu = calc.estimate(calc.get_architecture("llama-2-7b"), Scenario(context=10), gpu="l4").to_dict()
    assert with_gpu["max_sequences"] >= 0 and with_gpu["gpu"] == "L4 24GB"
    json.dumps(with_gpu)


def test_a_local_config_file_and_a_nested_text_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(calc.get_architecture("gemma-2-9b").config))
    arch = calc.architecture_from_file(path)
    assert arch.layout == calc.get_architecture("gemma-2-9b").layout
    nested = {"model_type": "llava", "text_config": calc.get_architecture("llama-3.1-8b").config}
    assert calc.architecture_from_config(nested).layout.n_kv_heads == 8
    assert calc.resolve(str(path)).source == str(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: calc.get_architecture("llama-9"), "unknown architecture 'llama-9'"),
        (lambda: bytes_of("llama-2-7b", context=0), "context must be a positive"),
        (lambda: bytes_of("llama-2-7b", context=10, dtype="int3"), "unknown dtype 'int3'"),
        (lambda: bytes_of("llama-2-7b", context=10, dtype="int4", group_size=48), "group size 48 does not divide"),
        (lambda: bytes_of("deepseek-v2", context=10, dtype="kivi-2"), "MLA caches one latent"),
        (lambda: bytes_of("llama-2-7b", context=10, keep_ratio=1.5), "kept ratio"),
        (lambda: calc.architecture_from_config({"hidden_size": 64}), "no num_hidden_layers"),
        (lambda: calc.architecture_from_config({"num_hidden_layers": 2, "num_attention_heads": 0}), "num_attention_heads must be a whole number from 1 to 1,024, not 0"),
        (lambda: calc.architecture_from_config([1, 2]), "JSON object"),
        (lambda: calc.architecture_from_json_text("{not json"), "not valid JSON"),
        (lambda: calc.estimate(calc.get_architecture("llama-2-7b"), Scenario(context=5), gpu="tpu"), "unknown GPU 'tpu'"),
    ],
)
def test_bad_input_gets_a_clear_error(make, message):
    with pytest.raises(CalcError, match=message):
        make()


def test_a_hub_id_without_network_gets_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CalcError, match="HF_HUB_OFFLINE is set"):
        calc.resolve("meta-llama/Llama-3.1-8B")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(architectures, "HUB_URL", "http://127.0.0.1:9/{id}/config.json")  # nothing listens there
    with pytest.raises(CalcError, match="could not fetch the config of 'meta-llama/Llama-3.1-8B'"):
        calc.resolve("meta-llama/Llama-3.1-8B")
