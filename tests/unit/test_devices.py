"""Models split across GPUs, what can be checked without a GPU: where each layer computes (from
its parameters or accelerate's hook), how layers group by device, the per-device memory rows,
the refusals of device_map auto (no CUDA, no accelerate, a CPU device) in the API, the CLI and the
paged cache, and that a run on one device is what it was (no per-device records, the same draws).
The split itself is tested on two GPUs in tests/gpu/test_multi_gpu.py."""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch

from kvviz import cli
from kvviz.model import devices
from kvviz.runtime import engine
from kvviz.model import loading as models
from kvviz.record.metrics import device_memory_rows, index_ranges
from kvviz.model.loading import ModelLoadError, pick_device_map
from kvviz.policies.scoring import random_draw

CUDA0, CUDA1 = torch.device("cuda", 0), torch.device("cuda", 1)


def test_a_model_on_the_cpu_has_every_layer_and_its_input_on_the_cpu(tiny_llama):
    assert devices.layer_devices(tiny_llama) == [torch.device("cpu")] * 2
    assert devices.input_device(tiny_llama) == torch.device("cpu")
    assert not devices.is_split(devices.layer_devices(tiny_llama))


def test_an_offloaded_layer_computes_where_its_accelerate_hook_says(tiny_llama):
    # accelerate keeps offloaded weights on the meta device and records where the module
    # computes in its hook (an int for a CUDA index); the nearest hooked module around a layer wins
    model = copy.deepcopy(tiny_llama)
    model.model.layers[1].to("meta")
    model._hf_hook = types.SimpleNamespace(execution_device=0)
    model.model.layers[1]._hf_hook = types.SimpleNamespace(execution_device=1)
    assert devices.layer_devices(model) == [torch.device("cpu"), CUDA1]
    model.model.layers[1]._hf_hook = None  # no hook of its own: the model's
    assert devices.layer_devices(model) == [torch.device("cpu"), CUDA0]


def test_layers_group_by_device_in_order_of_their_first_layer():
    placed = [CUDA0, CUDA0, CUDA1, CUDA1, CUDA0]
    assert devices.layers_by_device(placed) == {CUDA0: [0, 1, 4], CUDA1: [2, 3]}
    assert devices.describe(placed) == "cuda:0 + cuda:1"
    assert devices.describe([torch.device("cpu")] * 3) == "cpu"
    assert devices.is_split(placed) and not devices.is_split([CUDA1, CUDA1])


@pytest.mark.parametrize(
    "indices, text",
    [([0, 1, 2, 5], "0-2, 5"), ([3], "3"), ([0, 2, 4], "0, 2, 4"), ([16, 17, 18, 19, 31], "16-19, 31"), ([], "")],
)
def test_index_ranges(indices, text):
    assert index_ranges(indices) == text


def test_memory_rows_per_device():
    rows = device_memory_rows({
        "cuda:0": {"layers": list(range(16)), "weights_bytes": 3 * 2**30, "kv_bytes": 1536, "allocated_bytes": 4 * 2**30},
        "cuda:1": {"layers": [], "weights_bytes": 512},
    })
    assert rows == [
        ("On cuda:0", "layers 0-15 · weights 3.0 GiB · KV cache 1.5 KiB · allocated by torch 4.0 GiB"),
        ("On cuda:1", "no decoder layer · weights 512 bytes"),
    ]


def test_the_summary_of_a_split_model_has_a_row_per_device(tiny_llama):
    s = models.summarize_model(tiny_llama, name="tiny", source="in-process")
    assert not s.split and s.device_rows() == [] and not any(k.startswith("On ") for k, _ in s.as_rows())
    s.layers_by_device = {"cuda:0": [0], "cuda:1": [1]}
    s.weights_by_device = {"cuda:0": 2048, "cuda:1": 1024}
    rows = dict(s.as_rows())
    assert rows["On cuda:0"] == "layers 0 · weights 2.0 KiB"
    assert rows["On cuda:1"] == "layers 1 · weights 1.0 KiB"


def test_weights_by_device_counts_tied_weights_once(tiny_llama):
    model = copy.deepcopy(tiny_llama)
    model.lm_head.weight = model.model.embed_tokens.weight
    unique = {id(t): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
    assert devices.weights_by_device(model) == {"cpu": sum(unique.values())}


# --------------------------------------------------------------------------- refusals


def test_no_device_map_is_one_device():
    assert pick_device_map(None) is None and pick_device_map("none") is None


def test_device_map_auto_needs_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="no CUDA GPU is available here"):
        pick_device_map("auto")


def test_device_map_auto_needs_accelerate(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="needs the accelerate package.*pip install accelerate"):
        pick_device_map("auto")


def test_device_map_auto_with_cuda_and_accelerate(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices, "accelerate_available", lambda: True)
    assert pick_device_map("AUTO ") == "auto"
    with pytest.raises(ModelLoadError, match="cannot go with device 'cpu'"):
        models.load_model("/no/such/model.gguf", device="cpu", device_map="auto")


def test_an_unknown_device_map_is_refused():
    with pytest.raises(ModelLoadError, match="Unknown device map 'balanced'"):
        pick_device_map("balanced")


@pytest.mark.parametrize("command", [["run", "--prompt", "hi"], ["sweep", "--policy", "h2o", "--ratios", "0.5"], ["paged", "--prompt", "hi"]])
def test_every_command_that_loads_a_model_takes_device_map_auto(command):
    assert cli.build_parser().parse_args([*command, "--device-map", "auto"]).device_map == "auto"
    assert cli.build_parser().parse_args(command).device_map is None


def test_cli_device_map_without_cuda_is_one_line_and_status_2(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["run", "--prompt", "hi", "--device-map", "auto"]) == 2
    err = capsys.readouterr().err
    assert err == "error: Device map 'auto' splits a model across CUDA GPUs, but no CUDA GPU is available here.\n"


def test_cli_refuses_another_device_map(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--prompt", "hi", "--device-map", "balanced"])
    assert exit_.value.code == 2
    assert "invalid choice: 'balanced'" in capsys.readouterr().err


def test_the_paged_cache_refuses_a_split_model(tiny_llama, monkeypatch):
    from kvviz.paged.run import PagedSettings, run_paged

    monkeypatch.setattr(devices, "layer_devices", lambda model: [CUDA0, CUDA1])
    with pytest.raises(ValueError, match="does not run on a model split across GPUs"):
        run_paged(tiny_llama, None, ["hi"], PagedSettings())


# --------------------------------------------------------------------------- one device, as before


def test_a_run_on_one_device_records_no_device_memory(tiny_llama):
    class Tok:
        eos_token_id = None

        def decode(self, ids):
            return " ".join(map(str, ids))

        def convert_ids_to_tokens(self, ids):
            return [str(i) for i in ids]

    trace = engine.run(tiny_llama, Tok(), list(range(1, 21)), "h2o", budget=8, max_new_tokens=4, stop_at_eos=False)
    assert trace.device == "cpu" and trace.device_memory == {}
    assert trace.evicted_at_step.shape == (2, 2, 24)


def test_random_draws_come_from_the_runs_generator():
    expected = torch.rand(3, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(random_draw((3, 5), torch.Generator().manual_seed(7), torch.device("cpu")), expected)


def four_layer_model():
    from transformers import LlamaConfig

    from kvviz.model.random_model import random_llama

    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, attn_implementation="sdpa",
    )
    return random_llama(config, {"": "cpu"}, dtype=torch.float32, seed=4)


# torch tells cpu and cpu:0 apart as devices (tensors made on either live on the CPU): layers that
# alternate between them take the paths of a model split across two GPUs, and must give exactly
# what one device gives
CPU, CPU0 = torch.device("cpu"), torch.device("cpu", 0)
ALTERNATING = [CPU, CPU0, CPU, CPU0]


def test_records_kept_per_device_gather_in_layer_order():
    from kvviz.runtime.policy_cache import PolicyCache
    from kvviz.policies.spec import PolicySpec

    model = four_layer_model()
    ids = list(range(3, 33))

    def run(layer_devices):
        cache = PolicyCache(PolicySpec.of("h2o", budget=8).pipeline(), 4, len(ids), len(ids) + 5, 2, layer_devices, measure_lost_mass=True)
        lost = []
        with cache.attached(model), torch.inference_mode():
            logits = engine.prefill(model, cache, ids)
            lost.append(cache.take_lost_mass())
            for step in range(4):
                token = torch.tensor([[int(logits[0, -1].argmax())]])
                logits = engine.decode_step(model, cache, token, torch.tensor([len(ids) + step]))
                lost.append(cache.take_lost_mass())
        return cache, torch.stack(lost)

    one, lost_one = run([CPU] * 4)
    two, lost_two = run(ALTERNATING)
    assert len(one.records) == 1 and [r.layers for r in two.records] == [[0, 2], [1, 3]]
    assert torch.equal(two.evicted_at, one.evicted_at) and (one.evicted_at >= 0).any()
    torch.testing.assert_close(two.scores, one.scores, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(lost_two, lost_one, rtol=0, atol=0)
    assert lost_one.shape == (5, 4) and (lost_one > 0).any()
    # 8 entries x 2 KV heads x 16 dims x 4 bytes, K and V, two layers on each "device"
    assert two.kv_bytes_by_device() == {"cpu": 2 * 2 * 2 * 8 * 16 * 4, "cpu:0": 2 * 2 * 2 * 8 * 16 * 4}


@pytest.mark.parametrize("policy, budget", [("h2o", 8), ("snapkv", 8), ("random", 8), ("quant", None), ("snapkv+quant", 8)])
def test_a_run_over_two_devices_equals_one_device(policy, budget, monkeypatch):
    from kvviz.model.random_model import IdTokenizer

    model = four_layer_model()
    ids = list(range(3, 33))
    kw = dict(budget=budget, max_new_tokens=6, stop_at_eos=False, capture_queries=True, keep_logprobs=True)
    ref = engine.run(model, IdTokenizer(), ids, policy, **kw)
    monkeypatch.setattr(devices, "layer_devices", lambda m: list(ALTERNATING))
    got = engine.run(model, IdTokenizer(), ids, policy, **kw)
    assert got.generated_ids == ref.generated_ids
    np.testing.assert_array_equal(got.evicted_at_step, ref.evicted_at_step)
    np.testing.assert_array_equal(got.scores, ref.scores)
    np.testing.assert_array_equal(got.lost_mass, ref.lost_mass)
    assert torch.equal(got.extra["logprobs"], ref.extra["logprobs"]) and got.kv_bytes == ref.kv_bytes
    assert (ref.device, ref.device_memory) == ("cpu", {})
    assert got.device == "cpu + cpu:0"
    memory = got.device_memory
    assert [memory["cpu"]["layers"], memory["cpu:0"]["layers"]] == [[0, 2], [1, 3]]
    assert memory["cpu"]["kv_bytes"] + memory["cpu:0"]["kv_bytes"] == got.kv_bytes[-1]
