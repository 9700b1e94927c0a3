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
  kivi-4 / kivi-2            KIVI (Liu et al., 2024), as its code holds them: keys per channel, one
                             scale and zero point per G tokens, the keys since the last multiple of
                             R in full precision; values per token in groups of G channels, the R
                             newest in full precision (as kvviz's kivi store)

What-ifs: a policy keeping a ratio r of the tokens holds max(1, round(r × n)) per layer (kvviz's
budget rule); a sliding window W holds min(n, W) on every layer. Every result carries its
formulas as text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np

# the catalogue and config reading, re-exported: callers use ``memory`` for everything
from kvviz.i18n import N_, _
from kvviz.calculator.architectures import (  # noqa: F401
    HUB_URL, MAX_BATCH, MAX_CONTEXT, MAX_PARAMS, Architecture, CalcError, Layout, architecture_from_config,
    architecture_from_file, architecture_from_hub, architecture_from_json_text, bundled, count_parameters,
    get_architecture, layer_windows, layout_from_config, resolve, shown, text_config, value_text, whole,
)


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
# bytes


@dataclass(frozen=True)
class Scenario:
    """What to compute: a context, a batch and the what-ifs."""

    context: int
    batch: int = 1
    dtype: str = "bf16"
    group_size: int = 32  # G: elements sharing a scale and zero point (KIVI: channels of a value, tokens of a key channel)
    residual: int = 128  # R: KIVI's full-precision window, and how many keys wait before quantization (the paper's 128)
    full_bytes: int = 2  # s: bytes of a scale, a zero point or a full-precision element (bf16/fp16)
    keep_ratio: float | None = None  # a cache policy keeping this share of the tokens
    window: int | None = None  # a sliding window on every layer

    def validate(self, layout: Layout) -> None:
        _check(self.context, "context", "tokens", MAX_CONTEXT, "2^24, above the longest published context")
        _check(self.batch, "batch", "sequences", MAX_BATCH, "2^16, 256 times vLLM's default of 256 at once")
        if not isinstance(self.dtype, str) or self.dtype not in CACHE_DTYPES:
            raise CalcError(f"unknown dtype {shown(self.dtype)}. Known: {', '.join(CACHE_DTYPES)}.")
        kind = CACHE_DTYPES[self.dtype].kind
        if kind != "float":
            _check(self.group_size, "the group size", "elements", layout.vector_dim, "the cached vector's length")
            if layout.vector_dim % self.group_size:
                raise CalcError(_("group size {group} does not divide the cached vector of {d} elements.").format(group=self.group_size, d=layout.vector_dim))
            if self.full_bytes not in (1, 2, 4):
                raise CalcError(f"scales are stored in 1, 2 or 4 bytes, not {value_text(self.full_bytes)}.")
        if kind == "kivi":
            if layout.attention == "MLA":
                raise CalcError(_("KIVI quantizes keys per channel and values per token; MLA caches one latent vector instead: use int4 or int2."))
            _check(self.residual, "KIVI's residual window", "tokens", MAX_CONTEXT, "the longest context")
            if self.residual > self.group_size and self.residual % self.group_size:
                raise CalcError(_("KIVI's residual window ({residual}) must be a multiple of the group size ({group}).").format(
                    residual=self.residual, group=self.group_size))
        ratio = self.keep_ratio
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1):
            raise CalcError(f"the kept ratio must be in (0, 1], not {value_text(ratio)}.")
        if self.window is not None:
            _check(self.window, "the sliding window", "tokens", MAX_CONTEXT, "the longest context")


def _check(value, what: str, unit: str, most: int, why: str) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 1 <= value <= most
    if not ok:
        raise CalcError(f"{what} must be a positive whole number of {unit} up to {most:,} ({why}), not {value_text(value)}.")


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
    return kivi_vector_bytes(d, b, G, s, scenario.residual, tokens)


# ---------------------------------------------------------------------------------------------
# KIVI: its bytes and their formula, together, so that a change to its layout is made in one place


def kivi_vector_bytes(d: int, b: int, G: int, s: int, R: int, tokens: np.ndarray) -> np.ndarray:
    """Bytes of ``tokens`` tokens of one KV head's keys and values under KIVI (``b``-bit codes,
    ``d`` dims, value groups of ``G`` channels, ``s``-byte scales and full-precision elements,
    residual ``R`` tokens)."""
    quantized_vector = d * b // 8 + (d // G) * 2 * s  # a value: codes, then a scale and a zero per group
    keys_q = (tokens // R) * R  # whole chunks of R tokens, per channel, in groups of G tokens
    values_q = np.maximum(tokens - R, 0)  # all but the R newest, per token
    key_group = min(G, R)  # kvviz's kivi: a residual below G groups keys by R
    key_bytes = keys_q * d * b // 8 + (keys_q // key_group) * d * 2 * s + (tokens - keys_q) * d * s
    value_bytes = values_q * quantized_vector + (tokens - values_q) * d * s
    return key_bytes + value_bytes


def kivi_formula(lead: str, parts: str, sc: "Scenario", seq: int) -> str:
    """The per-sequence formula of ``kivi_vector_bytes`` as text."""
    R = sc.residual
    return lead + parts + _(
        "; in each, per KV head, keys: ⌊n / {R}⌋ × {R} tokens quantized per channel (a scale and a zero point per channel per "
        "{G} tokens), the rest in full precision; values: n − {R} tokens quantized per token, the {R} newest in full precision "
        "({s} bytes) = {seq} bytes"
    ).format(R=R, G=min(sc.group_size, R), s=sc.full_bytes, seq=f"{seq:,}")


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
        size = _("{n} bytes ({dtype})").format(n=dt.bits // 8, dtype=dt.name)
        if layout.attention == "MLA":
            text = _("({rank} latent + {rope} RoPE key) × {L} layers × {size}").format(
                rank=layout.kv_lora_rank, rope=layout.qk_rope_head_dim, L=L, size=size)
        else:
            text = _("2 (K, V) × {L} layers × {heads} KV heads × {d} dims × {size}").format(L=L, heads=layout.n_kv_heads, d=d, size=size)
        return Fraction(d * dt.bits, 8), text
    codes, groups = d * dt.bits // 8, d // G
    total = codes + groups * 2 * s
    in_groups = (_("1 group of {G} × a scale and a zero point of {s} bytes") if groups == 1
                 else _("{groups} groups of {G} × a scale and a zero point of {s} bytes")).format(groups=groups, G=G, s=s)
    vector = _("{total} bytes per {d}-dim vector ({bits}-bit codes: {codes} bytes, + {in_groups})").format(
        total=total, d=d, bits=dt.bits, codes=codes, in_groups=in_groups)
    if layout.attention == "MLA":
        text = _("{L} layers × {vector} ({rank} latent + {rope} RoPE key)").format(
            L=L, vector=vector, rank=layout.kv_lora_rank, rope=layout.qk_rope_head_dim)
    else:
        text = _("2 (K, V) × {L} layers × {heads} KV heads × {vector}").format(L=L, heads=layout.n_kv_heads, vector=vector)
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
    if not isinstance(weights_dtype, str) or weights_dtype not in WEIGHT_DTYPES:
        raise CalcError(f"unknown weights dtype {shown(weights_dtype)}. Known: {', '.join(WEIGHT_DTYPES)}.")
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
    f = {"per_token": token_text + " = " + _("{n} bytes per token").format(n=_num(per_token))}
    held = held_tokens(lay, scenario, n)[:, 0]
    f["per_sequence"] = _sequence_formula(lay, scenario, held, layer_token, seq)
    f["total"] = _("{seq} bytes per sequence × batch {batch} = {total} bytes").format(seq=f"{seq:,}", batch=B, total=f"{total:,}")
    notes = [f"{arch.display}: {_(arch.note)}"] if arch.note else []  # a bundled note is N_-marked (architectures.NOTES)
    if arch.max_context and n > arch.max_context:
        notes.append(_("{n} tokens is more than {model}'s context of {most}.").format(n=f"{n:,}", model=arch.display, most=f"{arch.max_context:,}"))
    if params is not None:
        params = whole(params, "the parameter count", MAX_PARAMS)
    else:
        try:
            params = arch.params
        except CalcError as exc:
            notes.append(_("weights unknown: {error}").format(error=exc))
    wbytes = weights_bytes(params, weights_dtype) if params else None
    est = Estimate(
        arch=arch.name, display=arch.display, attention=lay.attention, dtype=scenario.dtype, context=n, batch=B,
        bytes_per_token=float(per_token), bytes_per_sequence=seq, bytes_total=total, params=params,
        weights_dtype=weights_dtype, weights_bytes=wbytes, formulas=f, notes=notes,
    )
    if gpu is not None:
        _fit(est, gpu, utilization)
    return est


LAYER_GROUPS = {"sliding": N_("{count} sliding layers × {h} tokens"), "full": N_("{count} full layers × {h} tokens"),
                "": N_("{count} layers × {h} tokens")}


def _sequence_formula(lay: Layout, sc: Scenario, held: np.ndarray, layer_token: int, seq: int) -> str:
    n = sc.context
    kinds = ["sliding" if w is not None else "full" for w in lay.windows] if lay.sliding_layers else [""] * lay.n_layers
    groups: dict[tuple[int, str], int] = {}
    for h, kind in zip(held.tolist(), kinds):
        groups[(h, kind)] = groups.get((h, kind), 0) + 1
    parts = " + ".join(
        _(LAYER_GROUPS[kind]).format(count=count, h=f"{h:,}") for (h, kind), count in sorted(groups.items(), reverse=True)
    )
    why = []
    if sc.keep_ratio is not None:
        why.append(_("a policy keeping r = {r} holds max(1, round(r × {n})) tokens").format(r=f"{sc.keep_ratio:g}", n=f"{n:,}"))
    if lay.sliding_layers:
        w = next(w for w in lay.windows if w is not None)
        why.append(_("a sliding layer holds at most {w} tokens").format(w=f"{w:,}"))
    if sc.window is not None:
        why.append(_("a {w}-token window on every layer").format(w=f"{sc.window:,}"))
    lead = _("{reasons}: ").format(reasons=_("; ").join(why)) if why else ""
    if CACHE_DTYPES[sc.dtype].kind == "kivi":
        return kivi_formula(lead, parts, sc, seq)
    return lead + _("({parts}) × {bytes} bytes per token and layer = {seq} bytes").format(parts=parts, bytes=f"{layer_token:,}", seq=f"{seq:,}")


def _fit(est: Estimate, gpu: str, utilization: float) -> None:
    key = str(gpu or "").strip().lower()
    if key not in GPUS:
        raise CalcError(f"unknown GPU {shown(gpu)}. Known: {', '.join(GPUS)}.")
    if isinstance(utilization, bool) or not isinstance(utilization, (int, float)) or not 0 < utilization <= 1:
        raise CalcError(f"the usable share of GPU memory must be in (0, 1], not {utilization}.")
    g = GPUS[key]
    usable = int(g.bytes * utilization)
    weights = est.weights_bytes or 0
    budget = usable - weights
    fits = max(budget, 0) // est.bytes_per_sequence
    est.gpu, est.gpu_bytes, est.utilization, est.kv_budget_bytes, est.max_sequences = g.display, g.bytes, utilization, budget, int(fits)
    est.weights_fit = budget > 0
    est.formulas["fit"] = _(
        "⌊({mib} MiB × {util} − {weights} bytes of {dtype} weights) / {seq} bytes per sequence⌋ = {fits} sequences of {n} tokens"
    ).format(mib=f"{g.mib:,}", util=f"{utilization:g}", weights=f"{weights:,}", dtype=est.weights_dtype, seq=f"{est.bytes_per_sequence:,}",
             fits=f"{int(fits):,}", n=f"{est.context:,}")


def _num(x: Fraction) -> str:
    return f"{int(x):,}" if x.denominator == 1 else f"{float(x):,.2f}"


def memory_curve(arch: Architecture, scenario: Scenario, contexts) -> np.ndarray:
    """Bytes of the whole batch's cache at each context length (exact ints), for charts."""
    lay = arch.layout
    scenario.validate(lay)
    contexts = np.asarray(contexts, dtype=np.int64)
    if contexts.size and (contexts.min() < 1 or contexts.max() > 4 * MAX_CONTEXT):
        raise CalcError(f"chart contexts must be from 1 to {4 * MAX_CONTEXT:,} tokens.")
    # one sequence fits int64 (at most 2^61 bytes at the bounds); the batch may not: Python ints
    return sequence_bytes(lay, scenario, contexts).astype(object) * int(scenario.batch)


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
            n = f"{e.max_sequences:,}"
            if e is not e0 and e0.max_sequences:
                parts.append(_("**{n}** with {dtype} ({x}× as many)").format(n=n, dtype=e.dtype, x=f"{e.max_sequences / e0.max_sequences:.1f}"))
            else:
                parts.append(_("**{n}** with {dtype}").format(n=n, dtype=e.dtype))
        weights = (_("{dtype} weights, {gib} GiB").format(dtype=e0.weights_dtype, gib=f"{e0.weights_bytes / 2**30:.1f}")
                   if e0.weights_bytes else _("weights not counted"))
        if e0.params and e0.weights_dtype != "bf16":
            weights = _("{weights}; {gib} GiB in bf16").format(weights=weights, gib=f"{weights_bytes(e0.params, 'bf16') / 2**30:.1f}")
        if e0.weights_fit is False:
            weights = _("{weights}: more than {share} of the GPU").format(weights=weights, share=f"{e0.utilization:.0%}")
        lines.append("- " + _("**{model}** ({weights}): {counts}").format(model=e0.display, weights=weights, counts=_(", ").join(parts)))
    e0 = on_gpu[0]
    return (
        _("Requests of {n} tokens that fit at once on one {gpu} ({share} of its memory usable):").format(
            n=f"{e0.context:,}", gpu=e0.gpu, share=f"{e0.utilization:.0%}") + "\n"
        + "\n".join(lines)
    )
