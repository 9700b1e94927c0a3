"""kvviz.model.random_model, on the CPU: the 7B shape has Llama-2-7B's parameter count, accelerate's
auto placement of it over two capped GPUs splits the decoder layers (planned without GPUs), a
model built from the meta device is filled as its docstring says (RoPE frequencies against the
formula) whatever the map, and kvviz decodes it as transformers' generate does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from kvviz.runtime import engine
from kvviz.model.random_model import IdTokenizer, auto_device_map, llama_7b_config, meta_llama, random_llama

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("multi_gpu_bench", ROOT / "benchmarks" / "multi_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_config():
    return LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


@pytest.mark.parametrize("kv_heads, params", [(32, 6_738_415_616), (8, 6_738_415_616 - 32 * 2 * 4096 * (4096 - 1024))])
def test_the_7b_shape_has_llama2_7b_parameter_count(kv_heads, params):
    # 6,738,415,616: Llama-2-7B's parameters (Touvron et al., 2023; the HF checkpoint); with 8 KV
    # heads, k_proj and v_proj of every layer lose 4096 x 3072 each
    model = meta_llama(llama_7b_config(kv_heads), torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == params
    assert next(model.parameters()).device.type == "meta"


def test_capped_gpus_split_the_7b_layers_over_both():
    model = meta_llama(llama_7b_config(8), torch.bfloat16)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cap = int(0.6 * weights)
    device_map = auto_device_map(model, max_memory={0: cap, 1: cap})  # planned only: no GPU is touched
    placement = _bench().placement_of(device_map)
    assert set(placement) == {"cuda:0", "cuda:1"}
    assert sorted(placement["cuda:0"] + placement["cuda:1"]) == list(range(32))
    assert max(placement["cuda:0"]) < min(placement["cuda:1"])  # in order, as a pipeline
    held = {d: 0 for d in placement}
    for name, p in model.named_parameters():
        owner = max((k for k in device_map if name.startswith(k + ".") or k == ""), key=len)
        held[str(torch.device("cuda", device_map[owner]))] += p.numel() * p.element_size()
    assert all(size <= cap for size in held.values()) and sum(held.values()) == weights


def test_a_random_model_is_filled_as_documented():
    config = small_config()
    model = random_llama(config, {"": "cpu"}, dtype=torch.float32, seed=1)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert all(t.device.type == "cpu" for t in tensors.values())
    q = model.model.layers[0].self_attn.q_proj.weight
    assert abs(q.std().item() - 0.02) < 0.002 and abs(q.mean().item()) < 0.002  # N(0, 0.02²), 4096 draws
    assert torch.equal(model.model.layers[3].post_attention_layernorm.weight, torch.ones(64))
    theta = config.rope_parameters["rope_theta"] if hasattr(config, "rope_parameters") else config.rope_theta
    expected = 1.0 / theta ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    torch.testing.assert_close(model.model.rotary_emb.inv_freq.double(), expected, rtol=1e-6, atol=0)


def test_the_weights_do_not_depend_on_the_map():
    whole = random_llama(small_config(), {"": "cpu"}, dtype=torch.float32, seed=5)
    parts = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    pieces = random_llama(small_config(), parts, dtype=torch.float32, seed=5)
    other_seed = random_llama(small_config(), {"": "cpu"}, dtype=torch.float32, seed=6)
    for (name, a), b, c in zip(whole.state_dict().items(), pieces.state_dict().values(), other_seed.state_dict().values()):
        assert torch.equal(a, b), name
        assert a.ndim < 2 or not torch.equal(a, c), name


def test_a_map_to_disk_is_refused():
    with pytest.raises(ValueError, match="on disk"):
        random_llama(small_config(), {"": "disk"}, dtype=torch.float32)


def test_kvviz_decodes_the_random_model_as_generate_does():
    model = random_llama(small_config(), {"": "cpu"}, dtype=torch.float32, seed=2)
    ids = torch.randint(3, 256, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    trace = engine.run(model, IdTokenizer(), ids, "full", max_new_tokens=8)  # both stop at the config's EOS, if it comes
    ref = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert trace.generated_ids == ref[0, len(ids):].tolist()
    assert trace.tokens[:2] == [f"<{ids[0]}>", f"<{ids[1]}>"]


def test_the_benchmark_run_records_what_the_table_shows():
    model = random_llama(small_config(), {"": "cpu"}, dtype=torch.float32, seed=2)
    ids = list(range(3, 43))
    args = _bench().parse_args(["--new-tokens", "6", "--budget", "16"])
    run = _bench().timed_run(model, ids, "h2o", args)
    assert (run["policy"], run["budget"], run["device"]) == ("h2o", 16, "cpu")
    assert len(run["generated_ids"]) == 6 and run["device_memory"] == {}
    # 16 kept entries x 2 KV heads x 16 dims x 4 bytes, K and V, 4 layers
    assert run["kv_bytes"] == 4 * 2 * 2 * 16 * 16 * 4
