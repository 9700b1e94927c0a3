"""Architectures for the memory calculator: a Hugging Face config.json read into what one token
costs per layer (``Layout``) and the parameter count, and the catalogue the configs come from
(bundled with kvviz, a file, pasted text, a hub id). The byte arithmetic is in ``memory``.

A config is untrusted text: every number read from it is checked against a bound (``LIMITS``)
before anything is sized by it, and a config that cannot be used raises ``CalcError`` with a
one-line message naming the field, never another exception.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from kvviz.i18n import N_, _

DATA = Path(__file__).resolve().parents[1] / "data" / "architectures.json"
HUB_URL = "https://huggingface.co/{id}/resolve/main/config.json"
MAX_CONFIG_BYTES = 2_000_000  # a config.json is a few KB; the largest (long label maps) stay under 1 MB


class CalcError(ValueError):
    """Input the calculator cannot use; the message says what is wrong."""


def shown(text, most: int = 60) -> str:
    """User text quoted for a one-line message: control characters escaped, long text cut."""
    s = str(text)
    s = s if len(s) <= most else s[:most] + "…"
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in s) + "'"


def value_text(value) -> str:
    """A value for a message: short, on one line (1e+30, not thirty-one digits)."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, (list, dict)):
        return _("a JSON list") if isinstance(value, list) else _("a JSON object")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) >= 1e15:
        return f"{float(value):.3g}"
    return shown(repr(value))[1:-1]


# Bounds on what a config may say, each well above every released model and low enough that the
# per-layer tuples stay small and the byte counts stay inside int64 (at the bounds one token of
# one sequence is at most 2 x 1,024 x 1,024 x 4,096 x 4 bytes = 2^35; x 2^26 tokens on the chart's
# axis = 2^61).
MAX_LAYERS = 1024  # 8x the deepest released decoder (Llama-3.1-405B: 126 layers)
MAX_HEADS = 1024  # 8x the most query heads (Llama-3.1-405B: 128)
MAX_HEAD_DIM = 4096  # 16x the widest head (Gemma: 256); also MLA's kv_lora_rank (DeepSeek: 512)
MAX_HIDDEN = 2**17  # 8x the widest model (Llama-3.1-405B: 16,384)
MAX_INTERMEDIATE = 2**20  # 19x the widest MLP (Llama-3.1-405B: 53,248)
MAX_VOCAB = 2**22  # 16x the largest vocabulary (Gemma: 256,000)
MAX_EXPERTS = 4096  # 16x the most routed experts (DeepSeek-V3: 256)
MAX_CONTEXT = 2**24  # 16,777,216 tokens: above the longest published context (Llama-4-Scout: 10M)
MAX_BATCH = 2**16  # 256x vLLM's default max_num_seqs (256)
MAX_PARAMS = 10**14  # 50x the largest published models (about 2T parameters)


# ---------------------------------------------------------------------------------------------
# reading a config


@dataclass(frozen=True)
class Layout:
    """What one token costs per layer, read from a config."""

    attention: str  # "MHA", "GQA", "MQA" or "MLA"
    n_layers: int
    n_q_heads: int
    n_kv_heads: int | None  # None for MLA
    head_dim: int | None  # per-head dim; for MLA the uncompressed heads' d_h (qk_nope_head_dim), not cached
    kv_lora_rank: int | None = None  # MLA
    qk_rope_head_dim: int | None = None  # MLA
    windows: tuple = ()  # per layer (at most MAX_LAYERS): its sliding window, or None for full attention

    @property
    def vector_dim(self) -> int:
        """Elements of one cached vector: a key or a value of one KV head, or MLA's latent + RoPE key."""
        return self.head_dim if self.attention != "MLA" else self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def vectors_per_token_layer(self) -> int:
        return 2 * self.n_kv_heads if self.attention != "MLA" else 1

    @property
    def elements_per_token(self) -> int:
        """Cached elements of one token across all layers (no window)."""
        return self.n_layers * self.vectors_per_token_layer * self.vector_dim

    @property
    def sliding_layers(self) -> int:
        return sum(w is not None for w in self.windows)


def _first(cfg: dict, *names):
    for n in names:
        if cfg.get(n) is not None:
            return n, cfg[n]
    return names[0], None


def whole(value, what: str, most: int, least: int = 1):
    """``value`` as an int in [least, most], or CalcError naming ``what``; None stays None."""
    if value is None:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value == int(value)
    if not ok or not least <= value <= most:
        raise CalcError(_("{what} must be a whole number from {least} to {most}, not {value}.").format(
            what=what, least=f"{least:,}", most=f"{most:,}", value=value_text(value)))
    return int(value)


def _count(cfg: dict, most: int, *names, required: bool = True, least: int = 1) -> int | None:
    """The first of ``names`` the config gives, checked to be a whole number in [least, most]."""
    name, value = _first(cfg, *names)
    if value is None and required:
        raise CalcError(_("the config has no {names}: it does not look like a decoder language model config.").format(names=" / ".join(names)))
    return whole(value, _("the config's {name}").format(name=name), most, least)


def text_config(cfg: dict) -> dict:
    """The language model's part of a config (multimodal configs nest it under text_config)."""
    if not isinstance(cfg, dict):
        raise CalcError(_("a config must be a JSON object."))
    inner = cfg.get("text_config")
    return {**cfg, **inner} if isinstance(inner, dict) else cfg


def layer_windows(cfg: dict, n_layers: int) -> tuple:
    """Each layer's sliding window (None = full attention), following transformers' configs.
    ``n_layers`` is already checked (at most MAX_LAYERS)."""
    key, window = _first(cfg, "sliding_window", "attention_chunk_size")
    model_type = str(cfg.get("model_type", ""))
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == n_layers:
        sliding = [t in ("sliding_attention", "chunked_attention") for t in types]
    elif cfg.get("use_sliding_window") is False or not window:
        sliding = [False] * n_layers
    elif model_type == "gemma2":
        sliding = [i % 2 == 0 for i in range(n_layers)]
    elif model_type.startswith("gemma3"):
        pattern = _count(cfg, MAX_LAYERS, "sliding_window_pattern", required=False) or 6
        sliding = [(i + 1) % pattern != 0 for i in range(n_layers)]
    elif model_type.startswith("qwen2") and cfg.get("use_sliding_window"):
        first = _count(cfg, MAX_LAYERS, "max_window_layers", required=False, least=0) or 0
        sliding = [i >= first for i in range(n_layers)]
    else:
        sliding = [True] * n_layers  # transformers' cache: every layer slides when a window is set
    if not any(sliding):
        return (None,) * n_layers
    window = whole(window, _("the config's {name}").format(name=key), MAX_CONTEXT)
    return tuple(window if s else None for s in sliding)


def layout_from_config(cfg: dict) -> Layout:
    cfg = text_config(cfg)
    n_layers = _count(cfg, MAX_LAYERS, "num_hidden_layers", "n_layer", "num_layers")
    n_heads = _count(cfg, MAX_HEADS, "num_attention_heads", "n_head")
    windows = layer_windows(cfg, n_layers)
    if cfg.get("kv_lora_rank"):
        rank = _count(cfg, MAX_HEAD_DIM, "kv_lora_rank")
        rope = _count(cfg, MAX_HEAD_DIM, "qk_rope_head_dim")
        d_h = _count(cfg, MAX_HEAD_DIM, "qk_nope_head_dim", required=False)
        return Layout("MLA", n_layers, n_heads, None, d_h, rank, rope, windows)
    if cfg.get("multi_query") is True:
        n_kv = 1
    else:
        n_kv = _count(cfg, MAX_HEADS, "num_key_value_heads", "num_kv_heads", required=False) or n_heads
    head_dim = _count(cfg, MAX_HEAD_DIM, "head_dim", required=False)
    if head_dim is None:
        hidden = _count(cfg, MAX_HIDDEN, "hidden_size", "n_embd", "d_model")
        if hidden % n_heads:
            raise CalcError(_("hidden_size {hidden} is not a multiple of num_attention_heads {heads}; give head_dim.").format(hidden=hidden, heads=n_heads))
        head_dim = hidden // n_heads
        if head_dim > MAX_HEAD_DIM:
            raise CalcError(_("hidden_size / num_attention_heads = {dims} dims per head: more than {most}; give head_dim.").format(
                dims=f"{head_dim:,}", most=f"{MAX_HEAD_DIM:,}"))
    if n_kv > n_heads or n_heads % n_kv:
        raise CalcError(_("num_key_value_heads {kv} must divide num_attention_heads {heads}.").format(kv=n_kv, heads=n_heads))
    attention = "MHA" if n_kv == n_heads else "MQA" if n_kv == 1 else "GQA"
    return Layout(attention, n_layers, n_heads, n_kv, head_dim, windows=windows)


def count_parameters(cfg: dict) -> int:
    """Parameters of a decoder (embeddings, attention, MLP or experts, norms) from its config."""
    cfg = text_config(cfg)
    lay = layout_from_config(cfg)
    hidden = _count(cfg, MAX_HIDDEN, "hidden_size", "n_embd", "d_model")
    vocab = _count(cfg, MAX_VOCAB, "vocab_size")
    inter = _count(cfg, MAX_INTERMEDIATE, "intermediate_size", required=False)
    model_type = str(cfg.get("model_type", ""))
    L, H, nh = lay.n_layers, hidden, lay.n_q_heads
    if lay.attention == "MLA":
        nope, v = _count(cfg, MAX_HEAD_DIM, "qk_nope_head_dim"), _count(cfg, MAX_HEAD_DIM, "v_head_dim")
        q_rank = _count(cfg, MAX_HIDDEN, "q_lora_rank", required=False)
        qk = nope + lay.qk_rope_head_dim
        q = H * q_rank + q_rank + q_rank * nh * qk if q_rank else H * nh * qk
        kv = H * (lay.kv_lora_rank + lay.qk_rope_head_dim) + lay.kv_lora_rank + lay.kv_lora_rank * nh * (nope + v)
        attn = q + kv + nh * v * H
    else:
        d, kv_heads = lay.head_dim, lay.n_kv_heads
        attn = H * nh * d + 2 * H * kv_heads * d + nh * d * H
        if model_type.startswith("qwen2") or cfg.get("attention_bias"):
            attn += nh * d + 2 * kv_heads * d + (H if cfg.get("attention_bias") else 0)
    norms = (4 if model_type.startswith(("gemma2", "gemma3")) else 2) * H
    experts = _count(cfg, MAX_EXPERTS, "num_local_experts", "n_routed_experts", "num_experts", required=False, least=0)
    if experts:
        moe_inter = _count(cfg, MAX_INTERMEDIATE, "moe_intermediate_size", required=False) or inter
        if moe_inter is None:
            raise CalcError(_("the config has experts but no moe_intermediate_size or intermediate_size."))
        dense_layers = _count(cfg, L, "first_k_dense_replace", required=False, least=0) or 0
        shared = _count(cfg, MAX_EXPERTS, "n_shared_experts", required=False, least=0) or 0
        moe = (experts + shared) * 3 * H * moe_inter + H * experts
        if model_type == "deepseek_v3":
            moe += experts  # the router's score-correction bias
        mlp_total = dense_layers * 3 * H * (inter or 0) + (L - dense_layers) * moe
    else:
        if inter is None:
            raise CalcError(_("the config has no intermediate_size."))
        mlp_total = L * 3 * H * inter
    tied = cfg.get("tie_word_embeddings", True) is not False
    return vocab * H * (1 if tied else 2) + L * (attn + norms) + mlp_total + H


# ---------------------------------------------------------------------------------------------
# the catalogue


@dataclass(frozen=True, eq=False)
class Architecture:
    name: str
    display: str
    config: dict
    source: str  # where the config comes from: a hub config.json URL or a file
    hf_id: str | None = None
    note: str = ""
    checked: str = ""

    @cached_property
    def layout(self) -> Layout:
        return layout_from_config(self.config)

    @cached_property
    def params(self) -> int:
        return count_parameters(self.config)

    @property
    def max_context(self) -> int | None:
        """The config's max_position_embeddings, for a note; None when it gives no usable number."""
        value = text_config(self.config).get("max_position_embeddings")
        try:
            return whole(value, "max_position_embeddings", 2**62)
        except CalcError:
            return None


# the notes of kvviz/data/architectures.json, marked for translation (shown with _(); a test keeps them equal)
NOTES = (
    N_("v0.1 declares a 4,096-token sliding window on every layer (the paper's rolling buffer cache), and transformers' cache honours it; "
       "v0.2 and later drop it."),
    N_("use_sliding_window is false: every layer is full attention."),
    N_("Layers alternate: even layers (0, 2, ...) attend to the last 4,096 tokens only, odd layers to all of them "
       "(transformers' Gemma2Config.layer_types)."),
    N_("Multi-query attention: one KV head shared by all 8 query heads."),
    N_("MLA: each layer caches one 512-dim compressed latent and one 64-dim RoPE key per token, shared by all 128 heads."),
    N_("MLA as in V2. The hub checkpoint also holds one multi-token-prediction layer (num_nextn_predict_layers), not counted here: "
       "671B main-model parameters."),
    N_("The config declares a 2,047-token sliding window on every layer, and transformers' cache honours it."),
    N_("The model kvviz embeds and runs."),
)


@lru_cache(maxsize=1)
def bundled() -> dict[str, Architecture]:
    """The architectures kvviz ships with (kvviz/data/architectures.json), by lowercase name."""
    table = json.loads(DATA.read_text())
    return {
        name: Architecture(
            name=name, display=e["display"], config=e["config"], hf_id=e["hf_id"],
            source=f"https://huggingface.co/{e['hf_id']}/blob/main/config.json",
            note=e.get("note", ""), checked=e.get("checked", ""),
        )
        for name, e in table.items()
        if not name.startswith("_")
    }


def get_architecture(name: str) -> Architecture:
    table = bundled()
    key = str(name or "").strip().lower()
    if key not in table:
        raise CalcError(f"unknown architecture {shown(name)}. Known: {', '.join(table)} (or give a config.json).")
    return table[key]


def architecture_from_config(cfg, name: str = "custom", source: str = "pasted config") -> Architecture:
    """An Architecture from a parsed config.json; raises CalcError when it lacks the needed fields."""
    arch = Architecture(name=name, display=name, config=text_config(cfg), source=source)
    arch.layout  # noqa: B018  (validate now: a clear error instead of a late one)
    return arch


def parse_config_text(text: str) -> dict:
    """The JSON object of a config.json's text, or CalcError."""
    if len(text) > MAX_CONFIG_BYTES:
        raise CalcError(_("the config is {n} characters long; a config.json takes at most {most}.").format(n=f"{len(text):,}", most=f"{MAX_CONFIG_BYTES:,}"))
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalcError(_("not valid JSON: {error} at line {line}, column {column}.").format(error=exc.msg, line=exc.lineno, column=exc.colno)) from None
    except RecursionError:
        raise CalcError(_("not a config: the JSON is nested too deeply.")) from None
    if not isinstance(cfg, dict):
        raise CalcError(_("a config must be a JSON object."))
    return cfg


def architecture_from_json_text(text: str, name: str = "custom", source: str = "pasted config") -> Architecture:
    return architecture_from_config(parse_config_text(text), name, source)


def config_name(path: Path, cfg: dict) -> str:
    """A name for the model of a config file: the hub id of a Hugging Face cache snapshot
    (models--owner--name/snapshots/<commit>/config.json), else the config's _name_or_path (its last
    two parts when it is a path), else the folder when its name mentions the model type
    (Llama-3.1-8B/config.json for llama), else the model type, else the file's name."""
    parts = path.resolve().parts
    if len(parts) >= 4 and parts[-3] == "snapshots" and parts[-4].startswith("models--"):
        return parts[-4][len("models--"):].replace("--", "/")
    given = cfg.get("_name_or_path")
    if isinstance(given, str) and given.strip():
        tail = [p for p in re.split(r"[\\/]", given.strip()) if p not in ("", ".", "..")]
        if tail:
            return "/".join(tail[-2:])[:80]
    model_type = cfg.get("model_type") if isinstance(cfg.get("model_type"), str) else ""
    folder = path.resolve().parent.name if path.name == "config.json" else ""
    squash = lambda s: re.sub(r"[^a-z0-9]", "", s.lower())  # noqa: E731
    if folder and model_type and squash(model_type) and squash(model_type) in squash(folder):
        return folder
    return model_type or (path.stem if path.name != "config.json" else folder) or "custom"


def architecture_from_file(path: str | Path) -> Architecture:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise CalcError(f"cannot read {path}: {exc.strerror or exc}.") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise CalcError(f"{path} is larger than a config.json ({MAX_CONFIG_BYTES:,} bytes at most).")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CalcError(f"{path} is not UTF-8 text: is it a config.json?") from None
    cfg = parse_config_text(text)
    return architecture_from_config(cfg, name=config_name(path, cfg), source=str(path))


def architecture_from_hub(hf_id: str, timeout: float = 5.0) -> Architecture:
    """The config.json of a hub model, fetched over HTTPS (fails with a clear message offline)."""
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", hf_id or ""):
        raise CalcError(f"{shown(hf_id)} is not a Hugging Face model id (owner/name).")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise CalcError(f"HF_HUB_OFFLINE is set: cannot fetch the config of '{hf_id}'. Download its config.json and give it as a file.")
    url = HUB_URL.format(id=hf_id)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read(MAX_CONFIG_BYTES).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CalcError(
            f"could not fetch the config of '{hf_id}' from the Hugging Face hub ({reason}). "
            "Download its config.json and give it as a file."
        ) from None
    return architecture_from_json_text(text, name=hf_id, source=url)


def resolve(spec: str) -> Architecture:
    """A bundled name, a config.json path, or a hub id (owner/name)."""
    spec = str(spec or "").strip()
    if spec.lower() in bundled():
        return get_architecture(spec)
    try:
        is_file, exists = Path(spec).is_file(), Path(spec).exists()
    except (OSError, ValueError):  # a name too long for a path, or with a NUL byte
        is_file = exists = False
    if is_file:
        return architecture_from_file(spec)
    if "/" in spec and not exists and not spec.startswith((".", "/")):
        return architecture_from_hub(spec)
    return get_architecture(spec)
