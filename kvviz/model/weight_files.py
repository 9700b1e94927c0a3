"""The weights cache: dequantized GGUF weights kept as safetensors, so later starts take seconds.

An entry lives in ``$KVVIZ_CACHE_DIR`` (default ``~/.cache/kvviz``) under ``gguf-v<format>/<sha256
of the GGUF file>``. It is written to a temporary folder and renamed into place, and checked
before every use (manifest, file sizes, sha256 of every file, tensor names); anything missing or
wrong is rebuilt from the GGUF file by ``kvviz.model.loading``, never trusted. A full check leaves
``verified.json`` beside the files: each file's size, mtime, ctime and inode as they were when its
sha256 matched. A later check re-hashes only the files whose stat differs (any write through the
file system changes the ctime, which no tool can set back), which saves 0.3 s of a warm start.

A warm load (``load_mapped``) builds the model without memory for its parameters (meta device,
no random initialization), reads the safetensors file in one go and assigns its tensors to the
model: no from_pretrained machinery, no conversion (docs/PERFORMANCE.md "Start-up"). The weights
are the process's own memory, not the file's mapped pages: on the 2-core CPU a forward pass ran
2.4x slower on mapped weights, and copying them out of the mapping page by page took 2.9 s where
one read and a copy per tensor take 1.0 s (both under load); the model never depends on the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import cast

import torch

CACHE_FORMAT = 1  # bump when the layout of a weights cache entry changes
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
VERIFIED_FILE = "verified.json"  # the stat of each file when its checksum last matched


def weights_cache_dir() -> Path:
    """``$KVVIZ_CACHE_DIR`` or ``~/.cache/kvviz`` (``$XDG_CACHE_HOME/kvviz`` where that is set)."""
    env = os.environ.get("KVVIZ_CACHE_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return Path(base).expanduser() / "kvviz"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def gguf_cache_entry(gguf_path: str | Path) -> Path:
    """The weights cache folder of one GGUF file (it may not exist yet)."""
    return weights_cache_dir() / f"gguf-v{CACHE_FORMAT}" / file_sha256(Path(gguf_path))


def check_cache_entry(entry: Path, gguf_sha256: str) -> str | None:
    """None if the cache entry is complete and intact, else why it cannot be trusted."""
    manifest_path = entry / MANIFEST_FILE
    if not manifest_path.is_file():
        return "no manifest"
    try:
        manifest = json.loads(manifest_path.read_text())
        files: dict[str, dict] = manifest["files"]
        keys = list(manifest["keys"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable manifest"
    if manifest.get("format") != CACHE_FORMAT or manifest.get("gguf_sha256") != gguf_sha256:
        return "manifest of another file or format"
    if WEIGHTS_FILE not in files or "config.json" not in files:
        return "manifest lists no weights or config"
    for name, meta in files.items():
        file_path = entry / name
        if not file_path.is_file() or file_path.stat().st_size != meta.get("size"):
            return f"{name} missing or of the wrong size"
    verified = _read_verified(entry)
    for name, meta in files.items():
        if verified.get(name) != _stat_key(entry / name) and file_sha256(entry / name) != meta.get("sha256"):
            return f"{name} does not match its checksum"
    try:
        from safetensors import safe_open

        with safe_open(str(entry / WEIGHTS_FILE), framework="pt") as weights:
            stored = sorted(weights.keys())
    except Exception:
        return "weights are not a readable safetensors file"
    if stored != sorted(keys):
        return "weights hold other tensors than the manifest lists"
    if any(verified.get(name) != _stat_key(entry / name) for name in files):
        _write_verified(entry, {name: _stat_key(entry / name) for name in files})
    return None


def _stat_key(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def _read_verified(entry: Path) -> dict[str, list[int]]:
    try:
        verified = json.loads((entry / VERIFIED_FILE).read_text())
        return verified if isinstance(verified, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_verified(entry: Path, stats: dict[str, list[int]]) -> None:
    """Record the stats (atomically); an entry kvviz may not write to is simply hashed every time."""
    staging = entry / f".{VERIFIED_FILE}.{uuid.uuid4().hex[:8]}"
    try:
        staging.write_text(json.dumps(stats))
        staging.replace(entry / VERIFIED_FILE)
    except OSError:
        staging.unlink(missing_ok=True)


def load_mapped(entry: Path, device: str | None, dtype: torch.dtype):
    """(model, tokenizer) of a checked entry: the model is built with its parameters on the meta
    device (no memory, no initialization; buffers such as the rotary frequencies computed as usual)
    and the file's tensors, on ``device`` in ``dtype``, are assigned to it.
    Raises ValueError when the file's tensors do not fit the model."""
    from accelerate import init_empty_weights
    from safetensors.torch import load, load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights  # random init of meta tensors: 0.2 s for nothing

    config = AutoConfig.from_pretrained(str(entry), local_files_only=True)
    with init_empty_weights(include_buffers=False), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    on_cpu = device in (None, "cpu")
    if on_cpu:  # one read of the file, each tensor then in memory of its own (not the file's pages)
        state = load((entry / WEIGHTS_FILE).read_bytes())
    else:
        state = load_file(str(entry / WEIGHTS_FILE), device=device)
    state = {key: tensor.to(dtype) for key, tensor in state.items()}
    expected = set(model.state_dict())
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing, unexpected = expected - set(state) - tied, set(state) - expected
    if missing or unexpected:
        raise ValueError(f"weights cache entry does not fit the model: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    if not on_cpu:
        model.to(device)  # the buffers (rotary frequencies) were built on the CPU
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:
        raise ValueError(f"weights cache entry leaves {left[:3]} unloaded")
    generation = entry / "generation_config.json"
    if generation.is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(entry), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(entry), local_files_only=True)
    return model.eval(), tokenizer


def load_cache_entry(entry: Path, device_map: str | None, dtype: torch.dtype):
    """(model, tokenizer) of a checked entry: mapped (``load_mapped``) on one device, through
    transformers' from_pretrained when the model is split across GPUs (device_map "auto")."""
    if device_map != "auto":
        return load_mapped(entry, device_map, dtype)
    return load_with_from_pretrained(entry, device_map, dtype)


def load_with_from_pretrained(entry: Path, device_map: str | None, dtype: torch.dtype):
    """The slow path (3-4 s on a 2-core CPU for SmolLM2): weights read, copied and converted by
    from_pretrained. Tests hold the mapped model's logits equal to this one's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    # output_loading_info=True returns (model, info); transformers types it as the model alone
    loaded = cast("tuple[PreTrainedModel, dict[str, list]]", AutoModelForCausalLM.from_pretrained(
        str(entry),
        dtype=dtype,
        attn_implementation="sdpa",
        local_files_only=True,
        output_loading_info=True,
        device_map=device_map,
        disable_mmap=True,  # a model must not depend on the cache file staying intact
    ))
    model, info = loaded
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise ValueError(f"weights cache entry does not fit the model: {bad}")
    tokenizer = AutoTokenizer.from_pretrained(str(entry), local_files_only=True)
    return model.eval(), tokenizer


def save_cache_entry(model, tokenizer, entry: Path, gguf_sha256: str, gguf_name: str) -> None:
    """Write model weights (safetensors), config, tokenizer and a manifest to entry, atomically.

    Everything goes to a temporary folder beside entry, which is renamed into place once complete;
    the manifest records each file's size and sha256 and the tensor names, for check_cache_entry().
    """
    from safetensors.torch import save_file

    state = {}
    stored_at: set[int] = set()
    for key, tensor in model.state_dict().items():
        if tensor.data_ptr() in stored_at:
            continue  # tied weights (lm_head.weight = embed_tokens.weight) are stored once
        stored_at.add(tensor.data_ptr())
        state[key] = tensor.detach().to("cpu").contiguous()

    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name[:12]}-", dir=entry.parent))
    try:
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        model.config.save_pretrained(str(staging))
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        files = {
            item.name: {"size": item.stat().st_size, "sha256": file_sha256(item)}
            for item in sorted(staging.iterdir())
            if item.is_file()
        }
        manifest = {
            "format": CACHE_FORMAT,
            "gguf_sha256": gguf_sha256,
            "gguf_name": gguf_name,
            "keys": sorted(state),
            "files": files,
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        _replace_dir(staging, entry, gguf_sha256)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_dir(staging: Path, entry: Path, sha: str) -> None:
    """Move a finished staging folder to entry, putting any old (bad) entry aside first."""
    if entry.exists():
        trash = entry.with_name(f".old-{entry.name[:12]}-{uuid.uuid4().hex[:8]}")
        try:
            entry.rename(trash)
        except OSError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    try:
        staging.rename(entry)
    except OSError:
        if check_cache_entry(entry, sha) is not None:
            raise
        # another process put a sound entry in place meanwhile: keep theirs
