"""KV-cache memory from a model's config alone: bytes per token, per sequence and per batch, the
weights, and how many sequences fit on a GPU next to them. Pure Python and numpy (no torch).

What one token costs in one layer, in cached elements:

  MHA / GQA / MQA   2 × kv_heads × head_dim           a key and a value per KV head (MHA: as many
                                                       KV heads as query heads; GQA: fewer; MQA: one)
  MLA (DeepSeek)    kv_lora_rank + qk_rope_head_dim    the compressed latent c_KV and the decoupled
                                                       RoPE key k^R, shared by all heads of the layer

A sliding-window layer (Gemma-2's even layers, Mistral-7B-v0.1, Phi-3-mini) holds at most
``sliding_window`` tokens; a full-attention layer holds the whole context.

Bytes of a cached vector of d elements (b bits; s = bytes of a scale, a zero point or a
full-precision element, 2 for fp16/bf16; G = group size):

  fp32 / bf16 / fp16 / fp8   d × 4 / 2 / 2 / 1 (fp8's per-tensor scale is not counted)
  int8 / int4 / int2         d × b / 8 + (d / G) × 2 × s: codes packed into bytes, one scale and one
                             zero point per G elements (asymmetric, per token, as kvviz.storage.quantize
                             stores them); int4 with G = 32: 0.625 bytes per element
  kivi-4 / kivi-2            KIVI (Liu et al., 2024): keys per channel in groups of R tokens, values
                             per token in groups of G channels; the R newest values and the keys of
                             the group still filling stay in full precision (as kvviz's kivi store)

What-ifs: a policy keeping a ratio r of the tokens holds max(1, round(r × n)) per layer (kvviz's
budget rule); a sliding window W holds min(n, W) on every layer. Every result carries its
formulas as text.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data" / "architectures.json"
HUB_URL = "https://huggingface.co/{id}/resolve/main/config.json"


class CalcError(ValueError):
    """Input the calculator cannot use; the message says what is wrong."""


# ---------------------------------------------------------------------------------------------
# dtypes, GPUs


@dataclass(frozen=True)
class CacheDtype:
    name: str
    bits: int
    kind: str  # "float": stored as is; "int": per-token groups; "kivi": KIVI's layout
    help: str


CACHE_DTYPES = {
    d.name: d
    for d in (
        CacheDtype("fp32", 32, "float", "32-bit float (kvviz on a CPU)"),
        CacheDtype("bf16", 16, "float", "bfloat16, the usual GPU cache"),
        CacheDtype("fp16", 16, "float", "float16"),
        CacheDtype("fp8", 8, "float", "8-bit float (e4m3), one scale per tensor, not counted"),
        CacheDtype("int8", 8, "int", "8-bit codes, scale and zero point per group"),
        CacheDtype("int4", 4, "int", "4-bit codes, two per byte, scale and zero point per group"),
        CacheDtype("int2", 2, "int", "2-bit codes, four per byte, scale and zero point per group"),
        CacheDtype("kivi-4", 4, "kivi", "KIVI 4-bit: keys per channel, values per token, recent window in full precision"),
        CacheDtype("kivi-2", 2, "kivi", "KIVI 2-bit: keys per channel, values per token, recent window in full precision"),
    )
}

# bytes per parameter of the weights; int4: 4-bit codes plus an fp16 scale and zero point per 128
WEIGHT_DTYPES = {"fp32": Fraction(4), "bf16": Fraction(2), "fp16": Fraction(2), "fp8": Fraction(1), "int4": Fraction(1, 2) + Fraction(4, 128)}


@dataclass(frozen=True)
class Gpu:
    name: str
    display: str
    mib: int  # total memory as nvidia-smi reports it, in MiB

    @property
    def bytes(self) -> int:
        return self.mib * 2**20


GPUS = {
    g.name: g
    for g in (
        Gpu("h100", "H100 80GB", 81559),
        Gpu("h200", "H200 141GB", 143771),
        Gpu("a100-80gb", "A100 80GB", 81920),
        Gpu("a100-40gb", "A100 40GB", 40960),
        Gpu("l4", "L4 24GB", 23034),
        Gpu("rtx-4090", "RTX 4090 24GB", 24564),
    )
}
DEFAULT_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization: the rest is left to activations


# ---------------------------------------------------------------------------------------------
# what a config caches


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
    windows: tuple = ()  # per layer: its sliding window, or None for full attention

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
            return cfg[n]
    return None


def _positive_int(cfg: dict, what: str, *names, required=True) -> int | None:
    value = _first(cfg, *names)
    if value is None:
        if required:
            raise CalcError(f"the config has no {' / '.join(names)}: it does not look like a decoder language model config.")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise CalcError(f"the config's {names[0]} must be a positive integer, not {value!r}.")
    return int(value)


def text_config(cfg: dict) -> dict:
    """The language model's part of a config (multimodal configs nest it under text_config)."""
    if not isinstance(cfg, dict):
        raise CalcError("a config must be a JSON object.")
    inner = cfg.get("text_config")
    return {**cfg, **inner} if isinstance(inner, dict) else cfg


def layer_windows(cfg: dict, n_layers: int) -> tuple:
    """Each layer's sliding window (None = full attention), following transformers' configs."""
    window = cfg.get("sliding_window") or cfg.get("attention_chunk_size")
    model_type = str(cfg.get("model_type", ""))
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == n_layers:
        sliding = [t in ("sliding_attention", "chunked_attention") for t in types]
    elif cfg.get("use_sliding_window") is False or not window:
        sliding = [False] * n_layers
    elif model_type == "gemma2":
        sliding = [i % 2 == 0 for i in range(n_layers)]
    elif model_type.startswith("gemma3"):
        pattern = int(cfg.get("sliding_window_pattern") or 6)
        sliding = [(i + 1) % pattern != 0 for i in range(n_layers)]
    elif model_type.startswith("qwen2") and cfg.get("use_sliding_window"):
        first = int(cfg.get("max_window_layers") or 0)
        sliding = [i >= first for i in range(n_layers)]
    else:
        sliding = [True] * n_layers  # transformers' cache: every layer slides when a window is set
    if any(sliding) and (not isinstance(window, int) or window <= 0):
        raise CalcError(f"the config's sliding_window must be a positive integer, not {window!r}.")
    return tuple(int(window) if s else None for s in sliding)


def layout_from_config(cfg: dict) -> Layout:
    cfg = text_config(cfg)
    n_layers = _positive_int(cfg, "layers", "num_hidden_layers", "n_layer", "num_layers")
    n_heads = _positive_int(cfg, "heads", "num_attention_heads", "n_head")
    windows = layer_windows(cfg, n_layers)
    if cfg.get("kv_lora_rank"):
        rank = _positive_int(cfg, "", "kv_lora_rank")
        rope = _positive_int(cfg, "", "qk_rope_head_dim")
        d_h = _positive_int(cfg, "", "qk_nope_head_dim", required=False)
        return Layout("MLA", n_layers, n_heads, None, d_h, rank, rope, windows)
    if cfg.get("multi_query") is True:
        n_kv = 1
    else:
        n_kv = _positive_int(cfg, "", "num_key_value_heads", "num_kv_heads", required=False) or n_heads
    head_dim = _positive_int(cfg, "", "head_dim", required=False)
    if head_dim is None:
        hidden = _positive_int(cfg, "", "hidden_size", "n_embd", "d_model")
        if hidden % n_heads:
            raise CalcError(f"hidden_size {hidden} is not a multiple of num_attention_heads {n_heads}; give head_dim.")
        head_dim = hidden // n_heads
    if n_kv > n_heads or n_heads % n_kv:
        raise CalcError(f"num_key_value_heads {n_kv} must divide num_attention_heads {n_heads}.")
    attention = "MHA" if n_kv == n_heads else "MQA" if n_kv == 1 else "GQA"
    return Layout(attention, n_layers, n_heads, n_kv, head_dim, windows=windows)


def count_parameters(cfg: dict) -> int:
    """Parameters of a decoder (embeddings, attention, MLP or experts, norms) from its config."""
    cfg = text_config(cfg)
    lay = layout_from_config(cfg)
    hidden = _positive_int(cfg, "", "hidden_size", "n_embd", "d_model")
    vocab = _positive_int(cfg, "", "vocab_size")
    inter = _positive_int(cfg, "", "intermediate_size", required=False)
    model_type = str(cfg.get("model_type", ""))
    L, H, nh = lay.n_layers, hidden, lay.n_q_heads
    if lay.attention == "MLA":
        nope, v = _positive_int(cfg, "", "qk_nope_head_dim"), _positive_int(cfg, "", "v_head_dim")
        q_rank = cfg.get("q_lora_rank")
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
    experts = _first(cfg, "num_local_experts", "n_routed_experts", "num_experts")
    if experts:
        moe_inter = _first(cfg, "moe_intermediate_size") or inter
        dense_layers = int(cfg.get("first_k_dense_replace") or 0)
        shared = int(cfg.get("n_shared_experts") or 0)
        moe = (experts + shared) * 3 * H * moe_inter + H * experts
        if model_type == "deepseek_v3":
            moe += experts  # the router's score-correction bias
        mlp_total = dense_layers * 3 * H * (inter or 0) + (L - dense_layers) * moe
    else:
        if inter is None:
            raise CalcError("the config has no intermediate_size.")
        mlp_total = L * 3 * H * inter
    tied = cfg.get("tie_word_embeddings", True) is not False
    return vocab * H * (1 if tied else 2) + L * (attn + norms) + mlp_total + H


# ---------------------------------------------------------------------------------------------
# architectures


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
        return text_config(self.config).get("max_position_embeddings")


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
    key = (name or "").strip().lower()
    if key not in table:
        raise CalcError(f"unknown architecture '{name}'. Known: {', '.join(table)} (or give a config.json).")
    return table[key]


def architecture_from_config(cfg, name: str = "custom", source: str = "pasted config") -> Architecture:
    """An Architecture from a parsed config.json; raises CalcError when it lacks the needed fields."""
    arch = Architecture(name=name, display=name, config=text_config(cfg), source=source)
    arch.layout  # noqa: B018  (validate now: a clear error instead of a late one)
    return arch


def architecture_from_json_text(text: str, name: str = "custom", source: str = "pasted config") -> Architecture:
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalcError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from None
    return architecture_from_config(cfg, name, source)


def architecture_from_file(path: str | Path) -> Architecture:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CalcError(f"cannot read {path}: {exc.strerror or exc}.") from None
    name = path.parent.name if path.name == "config.json" and path.parent.name else path.stem
    return architecture_from_json_text(text, name=name, source=str(path))


def architecture_from_hub(hf_id: str, timeout: float = 5.0) -> Architecture:
    """The config.json of a hub model, fetched over HTTPS (fails with a clear message offline)."""
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", hf_id or ""):
        raise CalcError(f"'{hf_id}' is not a Hugging Face model id (owner/name).")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise CalcError(f"HF_HUB_OFFLINE is set: cannot fetch the config of '{hf_id}'. Download its config.json and give it as a file.")
    url = HUB_URL.format(id=hf_id)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read(2_000_000).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CalcError(
            f"could not fetch the config of '{hf_id}' from the Hugging Face hub ({reason}). "
            "Download its config.json and give it as a file."
        ) from None
    return architecture_from_json_text(text, name=hf_id, source=url)


def resolve(spec: str) -> Architecture:
    """A bundled name, a config.json path, or a hub id (owner/name)."""
    spec = (spec or "").strip()
    if spec.lower() in bundled():
        return get_architecture(spec)
    if Path(spec).is_file():
        return architecture_from_file(spec)
    if "/" in spec and not Path(spec).exists() and not spec.startswith((".", "/")):
        return architecture_from_hub(spec)
    return get_architecture(spec)


# ---------------------------------------------------------------------------------------------
# bytes


@dataclass(frozen=True)
class Scenario:
    """What to compute: a context, a batch and the what-ifs."""

    context: int
    batch: int = 1
    dtype: str = "bf16"
    group_size: int = 32  # G: elements sharing a scale and zero point (KIVI: channels of a value)
    residual: int = 128  # R: KIVI's full-precision window and key group, in tokens (the paper's 128)
    full_bytes: int = 2  # s: bytes of a scale, a zero point or a full-precision element (bf16/fp16)
    keep_ratio: float | None = None  # a cache policy keeping this share of the tokens
    window: int | None = None  # a sliding window on every layer

    def validate(self, layout: Layout) -> None:
        if isinstance(self.context, bool) or not isinstance(self.context, (int, np.integer)) or self.context < 1:
            raise CalcError(f"context must be a positive number of tokens, not {self.context!r}.")
        if not isinstance(self.batch, (int, np.integer)) or self.batch < 1:
            raise CalcError(f"batch must be at least 1, not {self.batch!r}.")
        if self.dtype not in CACHE_DTYPES:
            raise CalcError(f"unknown dtype '{self.dtype}'. Known: {', '.join(CACHE_DTYPES)}.")
        kind = CACHE_DTYPES[self.dtype].kind
        if kind != "float":
            if self.group_size < 1 or layout.vector_dim % self.group_size:
                raise CalcError(f"group size {self.group_size} does not divide the cached vector of {layout.vector_dim} elements.")
            if self.full_bytes not in (1, 2, 4):
                raise CalcError(f"scales are stored in 1, 2 or 4 bytes, not {self.full_bytes}.")
        if kind == "kivi":
            if layout.attention == "MLA":
                raise CalcError("KIVI quantizes keys per channel and values per token; MLA caches one latent vector instead: use int4 or int2.")
            if self.residual < 1:
                raise CalcError(f"KIVI's residual window must be at least 1 token, not {self.residual}.")
        if self.keep_ratio is not None and not 0 < self.keep_ratio <= 1:
            raise CalcError(f"the kept ratio must be in (0, 1], not {self.keep_ratio}.")
        if self.window is not None and self.window < 1:
            raise CalcError(f"the sliding window must be at least 1 token, not {self.window}.")


def held_tokens(layout: Layout, scenario: Scenario, context) -> np.ndarray:
    """(layers, len(context)) int64: tokens each layer holds at each context length."""
    n = np.atleast_1d(np.asarray(context, dtype=np.int64))
    held = np.broadcast_to(n, (layout.n_layers, n.size)).copy()
    if scenario.keep_ratio is not None:
        held = np.maximum(1, np.round(scenario.keep_ratio * held).astype(np.int64))
    for i, w in enumerate(layout.windows):
        if w is not None:
            held[i] = np.minimum(held[i], w)
    if scenario.window is not None:
        held = np.minimum(held, scenario.window)
    return held


def vector_bytes(layout: Layout, scenario: Scenario, tokens: np.ndarray) -> np.ndarray:
    """Bytes of ``tokens`` tokens (int64 array) of one cached vector stream: one KV head's keys and
    values together (MHA/GQA/MQA) or one layer's latent (MLA)."""
    dt = CACHE_DTYPES[scenario.dtype]
    d, G, s, b = layout.vector_dim, scenario.group_size, scenario.full_bytes, dt.bits
    per = layout.vectors_per_token_layer // (layout.n_kv_heads or 1)  # 2 (K and V) or 1 (MLA)
    if dt.kind == "float":
        return tokens * per * d * b // 8
    quantized_vector = d * b // 8 + (d // G) * 2 * s  # codes, then a scale and a zero per group
    if dt.kind == "int":
        return tokens * per * quantized_vector
    R = scenario.residual
    keys_q = (tokens // R) * R  # whole groups of R tokens, per channel
    values_q = np.maximum(tokens - R, 0)  # all but the R newest, per token
    key_bytes = keys_q * d * b // 8 + (keys_q // R) * d * 2 * s + (tokens - keys_q) * d * s
    value_bytes = values_q * quantized_vector + (tokens - values_q) * d * s
    return key_bytes + value_bytes


def sequence_bytes(layout: Layout, scenario: Scenario, context) -> np.ndarray:
    """Bytes of one sequence's cache at each context length (int64 array)."""
    held = held_tokens(layout, scenario, context)
    heads = layout.n_kv_heads or 1
    return (vector_bytes(layout, scenario, held) * heads).sum(axis=0)


def token_formula(layout: Layout, scenario: Scenario) -> tuple[Fraction, str]:
    """(bytes of one cached vector at the scenario's dtype, the per-token formula's left side).
    KIVI's full-precision window is not in it: it is a per-sequence term."""
    dt = CACHE_DTYPES[scenario.dtype]
    d, G, s = layout.vector_dim, scenario.group_size, scenario.full_bytes
    L = layout.n_layers
    if dt.kind == "float":
        size = f"{dt.bits // 8} bytes ({dt.name})"
        if layout.attention == "MLA":
            text = f"({layout.kv_lora_rank} latent + {layout.qk_rope_head_dim} RoPE key) × {L} layers × {size}"
        else:
            text = f"2 (K, V) × {L} layers × {layout.n_kv_heads} KV heads × {d} dims × {size}"
        return Fraction(d * dt.bits, 8), text
    codes, groups = d * dt.bits // 8, d // G
    total = codes + groups * 2 * s
    vector = (
        f"{total} bytes per {d}-dim vector ({dt.bits}-bit codes: {codes} bytes, + {groups} group"
        f"{'s' if groups > 1 else ''} of {G} × a scale and a zero point of {s} bytes)"
    )
    if layout.attention == "MLA":
        text = f"{L} layers × {vector} ({layout.kv_lora_rank} latent + {layout.qk_rope_head_dim} RoPE key)"
    else:
        text = f"2 (K, V) × {L} layers × {layout.n_kv_heads} KV heads × {vector}"
    return Fraction(total), text


# ---------------------------------------------------------------------------------------------
# one estimate


@dataclass
class Estimate:
    arch: str
    display: str
    attention: str
    dtype: str
    context: int
    batch: int
    bytes_per_token: float  # one token in every layer of a full cache at this dtype (quantization overhead included, KIVI's window not)
    bytes_per_sequence: int
    bytes_total: int
    params: int | None
    weights_dtype: str
    weights_bytes: int | None
    gpu: str | None = None
    gpu_bytes: int | None = None
    utilization: float | None = None
    kv_budget_bytes: int | None = None  # GPU memory × utilization − weights
    max_sequences: int | None = None
    weights_fit: bool | None = None  # the weights fit in the usable GPU memory
    formulas: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict; the GPU fields only when a GPU was given."""
        gpu_fields = ("gpu", "gpu_bytes", "utilization", "kv_budget_bytes", "max_sequences", "weights_fit")
        return {k: v for k, v in self.__dict__.items() if self.gpu is not None or k not in gpu_fields}


def weights_bytes(params: int, weights_dtype: str) -> int:
    if weights_dtype not in WEIGHT_DTYPES:
        raise CalcError(f"unknown weights dtype '{weights_dtype}'. Known: {', '.join(WEIGHT_DTYPES)}.")
    return int(math.ceil(params * WEIGHT_DTYPES[weights_dtype]))


def estimate(
    arch: Architecture,
    scenario: Scenario,
    gpu: str | None = None,
    weights_dtype: str = "bf16",
    utilization: float = DEFAULT_UTILIZATION,
    params: int | None = None,
) -> Estimate:
    """KV bytes of ``scenario`` on ``arch``, and with ``gpu`` how many sequences fit after the
    weights. ``params`` overrides the parameter count derived from the config."""
    lay = arch.layout
    scenario.validate(lay)
    n, B = int(scenario.context), int(scenario.batch)
    per_vector, token_text = token_formula(lay, scenario)
    per_token = per_vector * lay.n_layers * lay.vectors_per_token_layer
    seq = int(sequence_bytes(lay, scenario, n)[0])
    total = seq * B
    layer_token = int(per_vector * lay.vectors_per_token_layer)
    f = {"per_token": f"{token_text} = {_num(per_token)} bytes per token"}
    held = held_tokens(lay, scenario, n)[:, 0]
    f["per_sequence"] = _sequence_formula(lay, scenario, held, layer_token, seq)
    f["total"] = f"{seq:,} bytes per sequence × batch {B} = {total:,} bytes"
    notes = [f"{arch.display}: {arch.note}"] if arch.note else []
    if arch.max_context and n > arch.max_context:
        notes.append(f"{n:,} tokens is more than {arch.display}'s context of {arch.max_context:,}.")
    if params is None:
        try:
            params = arch.params
        except CalcError as exc:
            notes.append(f"weights unknown: {exc}")
    wbytes = weights_bytes(params, weights_dtype) if params else None
    est = Estimate(
        arch=arch.name, display=arch.display, attention=lay.attention, dtype=scenario.dtype, context=n, batch=B,
        bytes_per_token=float(per_token), bytes_per_sequence=seq, bytes_total=total, params=params,
        weights_dtype=weights_dtype, weights_bytes=wbytes, formulas=f, notes=notes,
    )
    if gpu is not None:
        _fit(est, gpu, utilization)
    return est


def _sequence_formula(lay: Layout, sc: Scenario, held: np.ndarray, layer_token: int, seq: int) -> str:
    n = sc.context
    kinds = ["sliding" if w is not None else "full" for w in lay.windows] if lay.sliding_layers else [""] * lay.n_layers
    groups: dict[tuple[int, str], int] = {}
    for h, kind in zip(held.tolist(), kinds):
        groups[(h, kind)] = groups.get((h, kind), 0) + 1
    parts = " + ".join(
        f"{count} {kind + ' ' if kind else ''}layers × {h:,} tokens" for (h, kind), count in sorted(groups.items(), reverse=True)
    )
    why = []
    if sc.keep_ratio is not None:
        why.append(f"a policy keeping r = {sc.keep_ratio:g} holds max(1, round(r × {n:,})) tokens")
    if lay.sliding_layers:
        w = next(w for w in lay.windows if w is not None)
        why.append(f"a sliding layer holds at most {w:,} tokens")
    if sc.window is not None:
        why.append(f"a {sc.window:,}-token window on every layer")
    lead = f"{'; '.join(why)}: " if why else ""
    if CACHE_DTYPES[sc.dtype].kind == "kivi":
        R = sc.residual
        return (
            f"{lead}{parts}; in each, per KV head, keys: ⌊n / {R}⌋ × {R} tokens quantized per channel "
            f"(a scale and a zero point per channel per {R} tokens), the rest in full precision; values: n − {R} "
            f"tokens quantized per token, the {R} newest in full precision ({sc.full_bytes} bytes) = {seq:,} bytes"
        )
    return f"{lead}({parts}) × {layer_token:,} bytes per token and layer = {seq:,} bytes"


def _fit(est: Estimate, gpu: str, utilization: float) -> None:
    key = (gpu or "").strip().lower()
    if key not in GPUS:
        raise CalcError(f"unknown GPU '{gpu}'. Known: {', '.join(GPUS)}.")
    if not 0 < utilization <= 1:
        raise CalcError(f"the usable share of GPU memory must be in (0, 1], not {utilization}.")
    g = GPUS[key]
    usable = int(g.bytes * utilization)
    weights = est.weights_bytes or 0
    budget = usable - weights
    fits = max(budget, 0) // est.bytes_per_sequence
    est.gpu, est.gpu_bytes, est.utilization, est.kv_budget_bytes, est.max_sequences = g.display, g.bytes, utilization, budget, int(fits)
    est.weights_fit = budget > 0
    est.formulas["fit"] = (
        f"⌊({g.mib:,} MiB × {utilization:g} − {weights:,} bytes of {est.weights_dtype} weights) / "
        f"{est.bytes_per_sequence:,} bytes per sequence⌋ = {int(fits):,} sequences of {est.context:,} tokens"
    )


def _num(x: Fraction) -> str:
    return f"{int(x):,}" if x.denominator == 1 else f"{float(x):,.2f}"


def memory_curve(arch: Architecture, scenario: Scenario, contexts) -> np.ndarray:
    """Bytes of the whole batch's cache at each context length (int64), for charts."""
    lay = arch.layout
    scenario.validate(lay)
    return sequence_bytes(lay, scenario, np.asarray(contexts, dtype=np.int64)) * int(scenario.batch)


def mha_equivalent_bytes_per_token(layout: Layout, dtype_bytes: int = 2) -> int | None:
    """What the same model would cache per token with plain MHA: a key and a value of head_dim for
    every query head (MLA: of d_h, as in the DeepSeek-V2 paper's comparison)."""
    if layout.head_dim is None:
        return None
    return 2 * layout.n_layers * layout.n_q_heads * layout.head_dim * dtype_bytes


# one real model per kind of attention, for side-by-side views
ATTENTION_EXAMPLES = {"MHA": "llama-2-7b", "GQA": "llama-3.1-8b", "MQA": "gemma-2b", "MLA": "deepseek-v2"}


def estimate_many(archs, scenario: Scenario, dtypes, **kwargs) -> tuple[list[Estimate], list[str]]:
    """``estimate`` for every architecture and cache dtype; combinations that cannot be computed
    (KIVI on MLA, a group size that does not divide) come back as messages instead."""
    out, problems = [], []
    for arch in archs:
        for dtype in dtypes:
            try:
                out.append(estimate(arch, replace(scenario, dtype=dtype), **kwargs))
            except CalcError as exc:
                problems.append(f"{arch.display}, {dtype}: {exc}")
    return out, problems


def fit_answer(estimates: list[Estimate]) -> str | None:
    """Markdown: how many sequences of each architecture fit on the GPU with each cache dtype,
    e.g. "**Llama-3.1-70B** (int4 weights, 34.9 GiB): **3** with bf16, **22** with kivi-2 (7.3× as many)"."""
    on_gpu = [e for e in estimates if e.gpu]
    if not on_gpu:
        return None
    by_arch: dict[str, list[Estimate]] = {}
    for e in on_gpu:
        by_arch.setdefault(e.arch, []).append(e)
    lines = []
    for group in by_arch.values():
        e0 = group[0]
        parts = []
        for e in group:
            gain = f" ({e.max_sequences / e0.max_sequences:.1f}× as many)" if e is not e0 and e0.max_sequences else ""
            parts.append(f"**{e.max_sequences:,}** with {e.dtype}{gain}")
        weights = f"{e0.weights_dtype} weights, {e0.weights_bytes / 2**30:.1f} GiB" if e0.weights_bytes else "weights not counted"
        if e0.params and e0.weights_dtype != "bf16":
            weights += f"; {weights_bytes(e0.params, 'bf16') / 2**30:.1f} GiB in bf16"
        if e0.weights_fit is False:
            weights += f": more than {e0.utilization:.0%} of the GPU"
        lines.append(f"- **{e0.display}** ({weights}): " + ", ".join(parts))
    e0 = on_gpu[0]
    return (
        f"Requests of {e0.context:,} tokens that fit at once on one {e0.gpu} ({e0.utilization:.0%} of its memory usable):\n"
        + "\n".join(lines)
    )
