"""kvviz.model.loading: summary fields, device and dtype choice, the GGUF weights cache, load errors."""

from __future__ import annotations

import copy
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from kvviz.model import loading as models
from kvviz.model import weight_files as weights_cache
from kvviz.model.loading import ModelLoadError, load_model, pick_device, pick_dtype, summarize_model
from kvviz.model.weight_files import check_cache_entry

FAKE_SHA = "0" * 64


# --------------------------------------------------------------------------- summary


def test_summary_of_the_tiny_llama(tiny_llama):
    s = summarize_model(tiny_llama, name="tiny", source="in-process")
    assert (s.n_layers, s.n_q_heads, s.n_kv_heads, s.head_dim) == (2, 4, 2, 16)
    assert s.attention == "GQA (4 query heads share 2 KV heads)"
    assert (s.dtype, s.device, s.max_context) == ("float32", "cpu", 256)
    assert s.architecture == "LlamaForCausalLM"
    assert s.kv_bytes_per_token == 2 * 2 * 2 * 16 * 4  # K and V, layers, KV heads, head dim, fp32
    assert s.n_params == sum(p.numel() for p in tiny_llama.parameters())
    rows = dict(s.as_rows())
    assert rows["KV heads"] == "2"
    assert rows["Device"] == "CPU (no GPU in use)"
    assert rows["KV cache per token"].startswith("512 bytes")
    assert rows["KV cache at max context"] == "128.0 KiB"  # 512 bytes x 256 tokens


def test_kv_bytes_follow_the_dtype(tiny_llama):
    half = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    s = summarize_model(half, name="tiny", source="in-process")
    assert s.dtype == "bfloat16"
    assert s.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2


@pytest.mark.parametrize(
    "n_kv, expected",
    [(4, "MHA (4 heads, each with its own K and V)"), (1, "MQA (4 query heads share 1 KV head)")],
)
def test_attention_kind(n_kv, expected):
    config = LlamaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=n_kv, max_position_embeddings=64,
    )
    s = summarize_model(LlamaForCausalLM(config), name="t", source="t")
    assert s.attention == expected
    assert s.head_dim == 8  # hidden 32 / 4 heads, no explicit head_dim
    assert s.kv_bytes_per_token == 2 * 1 * n_kv * 8 * 4


def test_tied_embeddings_count_once():
    config = LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    s = summarize_model(model, name="t", source="t")
    assert s.n_params == sum(p.numel() for p in model.parameters())  # parameters() dedups too
    assert s.n_params < sum(t.numel() for t in model.state_dict().values())


# --------------------------------------------------------------------------- device and dtype


def _fake_hardware(monkeypatch, cuda: bool, mps: bool, bf16: bool = True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(models, "_mps_available", lambda: mps)


@pytest.mark.parametrize(
    "cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _fake_hardware(monkeypatch, cuda=cuda, mps=mps)
    assert pick_device() == expected
    assert pick_device("auto") == expected


def test_an_explicit_device_is_honoured_or_refused(monkeypatch):
    _fake_hardware(monkeypatch, cuda=True, mps=False)
    assert pick_device("cpu") == "cpu"
    assert pick_device("CUDA") == "cuda"
    assert pick_device("cuda:1") == "cuda:1"
    with pytest.raises(ModelLoadError, match="2 CUDA GPU"):
        pick_device("cuda:5")
    with pytest.raises(ModelLoadError, match="MPS is not available"):
        pick_device("mps")
    with pytest.raises(ModelLoadError, match="Unknown device"):
        pick_device("tpu")
    _fake_hardware(monkeypatch, cuda=False, mps=False)
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        pick_device("cuda")


def test_dtype_is_bf16_on_gpu_fp32_on_cpu_and_overridable(monkeypatch):
    _fake_hardware(monkeypatch, cuda=True, mps=False, bf16=True)
    assert pick_dtype("cpu") == torch.float32
    assert pick_dtype("cuda") == torch.bfloat16
    assert pick_dtype("cuda", "float32") == torch.float32
    assert pick_dtype("cpu", "bf16") == torch.bfloat16
    _fake_hardware(monkeypatch, cuda=True, mps=False, bf16=False)
    assert pick_dtype("cuda") == torch.float16
    with pytest.raises(ModelLoadError, match="Unknown dtype"):
        pick_dtype("cpu", "int3")


def test_default_spec_is_the_embedded_gguf_unless_kvviz_model_is_set(monkeypatch):
    monkeypatch.delenv("KVVIZ_MODEL", raising=False)
    spec = models.default_model_spec()
    assert spec.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and Path(spec).is_file()
    monkeypatch.setenv("KVVIZ_MODEL", "someone/some-model")
    assert models.default_model_spec() == "someone/some-model"


# --------------------------------------------------------------------------- load errors


@pytest.mark.parametrize(
    "spec, message",
    [
        ("/no/such/model", "No such file or directory"),
        ("./missing-model.gguf", "No such file or directory"),
        ("not a model id!", "neither an existing path nor a valid Hugging Face model id"),
    ],
)
def test_bad_specs_raise_a_one_line_model_load_error(spec, message):
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(spec, device="cpu")
    assert "\n" not in str(info.value)


def test_files_and_folders_that_are_not_models(tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        load_model(str(text_file), device="cpu")
    with pytest.raises(ModelLoadError, match="without config.json"):
        load_model(str(tmp_path), device="cpu")
    fake_gguf = tmp_path / "broken.gguf"
    fake_gguf.write_bytes(b"this is not a gguf file" * 10)
    with pytest.raises(ModelLoadError, match="Could not read the GGUF file broken.gguf"):
        load_model(str(fake_gguf), device="cpu")


def test_unknown_hub_id_fails_with_a_clear_message():
    with pytest.raises(ModelLoadError, match="kvviz-no-such-org/no-such-model") as info:
        load_model("kvviz-no-such-org/no-such-model", device="cpu")
    assert "\n" not in str(info.value)


def test_a_hanging_network_probe_does_not_hold_the_load(monkeypatch):
    """No network where DNS or the connection hangs: the load gives up while the probe is still
    hanging (a condition, not a wall-clock limit that a busy runner could break)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    entered, release, returned = threading.Event(), threading.Event(), threading.Event()

    def hanging(*args, **kwargs):
        entered.set()
        release.wait(300)
        returned.set()
        raise OSError("released by the test")

    monkeypatch.setattr(models.socket, "create_connection", hanging)
    try:
        with pytest.raises(ModelLoadError, match="cannot be reached") as info:
            load_model("kvviz-no-such-org/no-such-model", device="cpu")
        assert entered.is_set() and not returned.is_set()  # kvviz stopped waiting; the probe had not answered
        assert "kvviz-no-such-org/no-such-model" in str(info.value) and "\n" not in str(info.value)
    finally:
        release.set()


def test_offline_hub_id_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_model("HuggingFaceTB/SmolLM2-360M-Instruct", device="cpu")


def test_local_directory_loads_in_eval_mode_with_sdpa(tiny_llama, smollm, tmp_path):
    tiny_llama.save_pretrained(tmp_path)
    smollm.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.summary.source == "local directory"
    assert (loaded.summary.n_layers, loaded.summary.n_kv_heads, loaded.summary.dtype) == (2, 2, "float32")
    assert not loaded.model.training
    assert loaded.model.config._attn_implementation == "sdpa"
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, tiny_llama(ids).logits)


@pytest.mark.parametrize("family", ["Gemma 2", "Phi-3"])
def test_a_directory_loads_with_the_attention_its_model_supports(family, smollm, tmp_path):
    from tests.model_families import build

    model, ids = build(family), torch.tensor([[5, 6, 7]])
    # what the installed transformers declares: Gemma 2 refuses sdpa on newer releases (5.17 takes it)
    name = type(model).__name__
    kernel = "sdpa" if getattr(type(model), "_supports_sdpa", False) else f"eager ({name} does not support sdpa)"
    with torch.no_grad():
        expected = model(ids).logits
    model.config._attn_implementation = None  # the saved config names no implementation: the loader picks
    model.save_pretrained(tmp_path)
    smollm.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    assert dict(loaded.summary.as_rows())["Attention kernel"] == kernel
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, expected)


# --------------------------------------------------------------------------- weights cache


def _small_entry(tmp_path: Path, tiny_llama, tokenizer) -> Path:
    entry = tmp_path / "gguf-v1" / FAKE_SHA
    weights_cache.save_cache_entry(tiny_llama, tokenizer, entry, gguf_sha256=FAKE_SHA, gguf_name="tiny.gguf")
    return entry


def _rewrite_manifest(entry: Path, **changes) -> None:
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest.update(changes)
    (entry / "manifest.json").write_text(json.dumps(manifest))


def _record_file(entry: Path, name: str) -> None:
    manifest = json.loads((entry / "manifest.json").read_text())
    path = entry / name
    manifest["files"][name] = {"size": path.stat().st_size, "sha256": weights_cache.file_sha256(path)}
    (entry / "manifest.json").write_text(json.dumps(manifest))


def test_a_saved_entry_is_complete_and_atomic(tmp_path, tiny_llama, smollm):
    entry = _small_entry(tmp_path, tiny_llama, smollm.tokenizer)
    assert check_cache_entry(entry, FAKE_SHA) is None
    assert check_cache_entry(entry, "1" * 64) == "manifest of another file or format"
    assert [p.name for p in entry.parent.iterdir()] == [FAKE_SHA]  # no staging folder left over
    manifest = json.loads((entry / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"model.safetensors", "config.json", "tokenizer.json"}
    model, _ = weights_cache.load_cache_entry(entry, None, torch.float32)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_llama(ids).logits)


def _truncate(entry: Path) -> None:
    path = entry / "model.safetensors"
    os.truncate(path, path.stat().st_size // 2)


def _flip_a_byte(entry: Path) -> None:
    path = entry / "model.safetensors"
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size - 100)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _wrong_keys(entry: Path) -> None:
    save_file({"some.other.tensor": torch.zeros(3)}, str(entry / "model.safetensors"))
    _record_file(entry, "model.safetensors")  # a manifest that agrees with the bad file


def _not_safetensors(entry: Path) -> None:
    (entry / "model.safetensors").write_bytes(b"\xff" * 64)
    _record_file(entry, "model.safetensors")


def _no_manifest(entry: Path) -> None:
    (entry / "manifest.json").unlink()


def _garbled_manifest(entry: Path) -> None:
    (entry / "manifest.json").write_text("{not json")


def _no_tokenizer(entry: Path) -> None:
    (entry / "tokenizer.json").unlink()


def _old_format(entry: Path) -> None:
    _rewrite_manifest(entry, format=0)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate, "model.safetensors missing or of the wrong size"),
        (_flip_a_byte, "model.safetensors does not match its checksum"),
        (_wrong_keys, "weights hold other tensors than the manifest lists"),
        (_not_safetensors, "weights are not a readable safetensors file"),
        (_no_manifest, "no manifest"),
        (_garbled_manifest, "unreadable manifest"),
        (_no_tokenizer, "tokenizer.json missing or of the wrong size"),
        (_old_format, "manifest of another file or format"),
    ],
)
def test_a_damaged_entry_is_never_trusted(tmp_path, tiny_llama, smollm, damage, reason):
    entry = _small_entry(tmp_path, tiny_llama, smollm.tokenizer)
    damage(entry)
    assert check_cache_entry(entry, FAKE_SHA) == reason


def test_weights_cache_is_reused_then_rebuilt_after_corruption(smollm, tmp_path, monkeypatch):
    """Real GGUF: a copied intact entry loads in seconds; a truncated one is rebuilt from the GGUF."""
    gguf = models.embedded_gguf_path()
    source_entry = weights_cache.gguf_cache_entry(gguf)  # written by the smollm fixture
    assert check_cache_entry(source_entry, source_entry.name) is None
    monkeypatch.setenv("KVVIZ_CACHE_DIR", str(tmp_path))
    entry = weights_cache.gguf_cache_entry(gguf)
    assert entry != source_entry
    shutil.copytree(source_entry, entry)

    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        expected = smollm.model(ids).logits

    reuse_messages: list[str] = []
    reused = load_model(str(gguf), device="cpu", dtype="float32", progress=lambda m, f: reuse_messages.append(m))
    assert reused.summary.weights_cache == "hit"
    assert not any(m.startswith("Dequantizing") for m in reuse_messages), reuse_messages  # the GGUF was not read again
    with torch.no_grad():
        torch.testing.assert_close(reused.model(ids).logits, expected)
    del reused

    _truncate(entry)
    messages: list[str] = []
    rebuilt = load_model(str(gguf), device="cpu", dtype="float32", progress=lambda m, f: messages.append(m))
    assert rebuilt.summary.weights_cache == "rebuilt: model.safetensors missing or of the wrong size"
    assert any(m.startswith("Dequantizing") for m in messages)
    assert check_cache_entry(entry, entry.name) is None
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]  # no staging or old folder
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.model(ids).logits, expected)
