"""Quantization lab: one layer's real cache for a prompt, and what quantizing it costs.

Keys and values come from a plain transformers forward with ``use_cache=True`` (a DynamicCache
passed in and read back), exactly as the model caches them: **keys after RoPE**. The layer's
queries come from ``kvviz.model.capture`` (RoPE applied), to measure how quantized keys change the
attention rows. Quantization is ``kvviz.storage.quantize.QuantizedStream``, the packed quantizer of the
``quant`` and ``kivi`` stores, so errors and bytes are those the stores produce.

Schemes (asymmetric: a scale and a zero point per group, in the model's dtype):

  per_token    each token's vector cut into groups of G channels (the quant store, axis per_token)
  per_channel  each channel cut into groups of G tokens (the quant store, axis per_channel)
  kivi         as KIVI's code: keys per channel in groups of G tokens, quantized R at a time
               (the keys since the last multiple of R wait in full precision), values per token
               in groups of G channels, the R newest in full precision

What a scheme does is measured three ways: the relative reconstruction error ‖x − x̂‖ / ‖x‖ of
K and V; the attention rows of the layer's real queries over quantized keys, KL(P ‖ P̂) per row
and the relative error of the attention output P V against P̂ V̂; and (``next_token_kl``) the
next-token distribution of the whole model running with a quantized cache, through
``kvviz.runtime.engine`` teacher-forced on the full cache's tokens.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from kvviz.i18n import N_, _
from kvviz.model import capture
from kvviz.model import devices
from kvviz.runtime import engine
from kvviz.policies import kivi, scoring
from kvviz.record.metrics import format_bytes
from kvviz.storage.quantize import QuantizedStream

MAX_TOKENS = 1024  # the lab reads at most this many prompt tokens (CPU-friendly)
MAX_NEW_TOKENS = 32  # steps of teacher forcing the page's next-token run may ask for
RESIDUALS = (8, 16, 32, 64, 128)  # the page's choices of KIVI's residual window, in tokens
OUTLIER_FACTOR = 3.0  # a channel is an outlier when its largest |value| is this many times the median channel's


@dataclass
class LayerCache:
    """One layer's cache for a prompt, as the model holds it."""

    layer: int
    keys: torch.Tensor  # (kv_heads, n, head_dim), post-RoPE as cached, the model's dtype
    values: torch.Tensor  # (kv_heads, n, head_dim)
    queries: torch.Tensor  # (q_heads, n, head_dim), RoPE applied
    n_layers: int

    @property
    def n_tokens(self) -> int:
        return self.keys.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.keys.dtype

    def window(self, m: int) -> "LayerCache":
        """The first ``m`` tokens (a causal prefix: the same cache as a prompt of m tokens)."""
        return LayerCache(self.layer, self.keys[:, :m], self.values[:, :m], self.queries[:, :m], self.n_layers)


class _Stop(Exception):
    """Raised after the layer being read has written its cache: the layers above are not needed."""


@torch.inference_mode()
def read_layer(model, ids, layer: int) -> LayerCache:
    """Keys and values of ``layer`` as transformers' own cache (a DynamicCache) holds them after a
    forward pass with ``use_cache=True``; queries from kvviz.model.capture. The pass stops once the layer
    has run. ``ids``: at most MAX_TOKENS are read."""
    from transformers import DynamicCache

    ids = [int(i) for i in ids][:MAX_TOKENS]
    if not ids:
        raise ValueError(_("The prompt is empty."))
    modules = capture.attention_modules(model)
    if not 0 <= layer < len(modules):
        raise ValueError(_("Layer {layer} is out of range: the model has layers 0..{last}.").format(layer=layer, last=len(modules) - 1))
    device = devices.input_device(model)  # a model split across GPUs takes its ids on the embedding's
    cache = DynamicCache(config=model.config)
    owner = threading.get_ident()

    def stop(module, args, output):
        if threading.get_ident() == owner:  # another session's run on the shared model goes on
            raise _Stop()

    handle = modules[layer].register_forward_hook(stop)
    try:
        model(input_ids=torch.tensor([ids], device=device), use_cache=True, logits_to_keep=1, **{engine.cache_keyword(model): cache})
    except _Stop:
        pass
    finally:
        handle.remove()
    keys, values = cache.layers[layer].keys[0], cache.layers[layer].values[0]  # (kv_heads, n, head_dim)
    if keys.shape[1] != len(ids):
        raise ValueError(_("Layer {layer} caches {held} of {n} tokens (a sliding window): the lab needs them all.").format(
            layer=layer, held=keys.shape[1], n=len(ids)))
    queries = capture.capture_layers(model, ids, [layer])[layer].q
    return LayerCache(layer, keys.clone(), values.clone(), queries, len(modules))


# ---------------------------------------------------------------------------------------------
# the distribution of keys and values


def channel_stats(lc: LayerCache, head: int) -> dict[str, np.ndarray]:
    """|K| and |V| of one KV head, per token and per channel, and the keys' outlier channels."""
    k, v = lc.keys[head].float().abs(), lc.values[head].float().abs()  # (n, head_dim)
    k_chan, v_chan = k.amax(dim=0), v.amax(dim=0)  # (head_dim,)
    outliers = torch.nonzero(k_chan > OUTLIER_FACTOR * k_chan.median()).flatten()
    return {
        "key_abs": k.cpu().numpy(), "value_abs": v.cpu().numpy(),
        "key_channel_max": k_chan.cpu().numpy(), "value_channel_max": v_chan.cpu().numpy(),
        "key_token_max": k.amax(dim=1).cpu().numpy(), "value_token_max": v.amax(dim=1).cpu().numpy(),
        "key_outliers": outliers.cpu().numpy(),
        "value_outliers": torch.nonzero(v_chan > OUTLIER_FACTOR * v_chan.median()).flatten().cpu().numpy(),
    }


# ---------------------------------------------------------------------------------------------
# quantizing the layer


SCHEME_NAMES = {"per_token": N_("per token, G={group}"), "per_channel": N_("per channel, G={group}")}  # shown with _()


@dataclass(frozen=True)
class Scheme:
    axis: str  # "per_token", "per_channel" or "kivi"
    bits: int
    group: int  # per_token: channels per scale; per_channel: tokens per scale; kivi: G, both
    residual: int = 0  # kivi's R

    @property
    def label(self) -> str:
        if self.axis == "kivi":
            return f"KIVI-{self.bits} (R={self.residual}, G={self.group})"
        return _(SCHEME_NAMES[self.axis]).format(group=self.group)

    def stream(self, role: str, kv_heads: int, head_dim: int, dtype, device) -> QuantizedStream:
        """The store's stream for keys (role "key") or values ("value")."""
        if self.axis == "kivi":
            keys, values = kivi.streams(self.bits, self.residual, self.group, kv_heads, head_dim, dtype, device)
            return keys if role == "key" else values
        return QuantizedStream(
            kv_heads, head_dim, dtype, device, bits=self.bits, per_channel=self.axis == "per_channel", group_size=self.group, symmetric=False
        )

    def policy(self) -> tuple[str, dict]:
        """The kvviz policy that stores a cache this way."""
        if self.axis == "kivi":
            return "kivi", {"bits": self.bits, "residual": self.residual, "group_size": self.group}
        return "quant", {"bits": self.bits, "axis": self.axis, "group_size": self.group}


def quantize_tensor(x: torch.Tensor, scheme: Scheme, role: str) -> tuple[torch.Tensor, int, int]:
    """x (kv_heads, n, head_dim) -> (x̂ in the model's dtype, bytes the store holds, tokens still in full precision)."""
    stream = scheme.stream(role, x.shape[0], x.shape[2], x.dtype, x.device)
    stream.append(x)
    held = sum(t.numel() * t.element_size() for t in stream.tensors())
    return stream.held(), held, stream.tail.shape[1]


@dataclass
class SchemeResult:
    scheme: Scheme
    key_error: float  # ‖K − K̂‖ / ‖K‖
    value_error: float
    attention_kl: float  # mean over query heads and rows of KL(P ‖ P̂), nats
    output_error: float  # ‖P V − P̂ V̂‖ / ‖P V‖
    bytes: int  # K and V as the store holds them (codes, scales, zero points, full-precision tails)
    bytes_full: int  # K and V in the model's dtype
    full_precision_keys: int  # tokens whose keys wait in full precision
    full_precision_values: int

    def row(self) -> dict:
        s = self.scheme
        return {
            "scheme": s.label, "axis": s.axis, "bits": s.bits, "group": s.group, "key error": self.key_error,
            "value error": self.value_error, "attention KL": self.attention_kl, "output error": self.output_error,
            "bytes": self.bytes, "of full": self.bytes / self.bytes_full,
        }


def _relative(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x = x.float()
    ref = float(x.square().sum())
    return float((x - x_hat.float()).square().sum()) ** 0.5 / ref**0.5 if ref > 0 else 0.0


def attention_effect(lc: LayerCache, keys_hat: torch.Tensor, values_hat: torch.Tensor) -> tuple[float, float]:
    """(mean KL(P ‖ P̂) of the causal attention rows, relative error of the attention output)."""
    n = lc.n_tokens
    pos = torch.arange(n, device=lc.keys.device)
    kv_pos = pos.expand(lc.keys.shape[0], -1)
    p = scoring.attention_probs(lc.queries, lc.keys, pos, kv_pos, reduce="none")  # (kv_heads, group, n, n)
    p_hat = scoring.attention_probs(lc.queries, keys_hat, pos, kv_pos, reduce="none")
    tiny = torch.finfo(torch.float32).tiny
    kl = (p * (p.clamp_min(tiny).log() - p_hat.clamp_min(tiny).log())).sum(dim=-1)  # masked entries: p = 0
    out = torch.einsum("hgqn,hnd->hgqd", p, lc.values.float())
    out_hat = torch.einsum("hgqn,hnd->hgqd", p_hat, values_hat.float())
    return float(kl.clamp_min(0).mean()), _relative(out, out_hat)


def evaluate(lc: LayerCache, scheme: Scheme) -> SchemeResult:
    k_hat, k_bytes, k_fp = quantize_tensor(lc.keys, scheme, "key")
    v_hat, v_bytes, v_fp = quantize_tensor(lc.values, scheme, "value")
    kl, out_err = attention_effect(lc, k_hat, v_hat)
    full = 2 * lc.keys.numel() * lc.keys.element_size()
    return SchemeResult(scheme, _relative(lc.keys, k_hat), _relative(lc.values, v_hat), kl, out_err, k_bytes + v_bytes, full, k_fp, v_fp)


def grid_window(n_tokens: int, channel_groups=(16, 32, 64)) -> tuple[int, tuple[int, ...]]:
    """(tokens analysed, per-channel groups used): the per-channel groups that fit, and the prompt
    cut to a multiple of the largest, so that every scheme quantizes every analysed token."""
    groups = tuple(g for g in channel_groups if g <= n_tokens)
    if not groups:
        raise ValueError(_("The prompt has {n} tokens: the lab needs at least {least}.").format(n=n_tokens, least=min(channel_groups)))
    return n_tokens - n_tokens % max(groups), groups


def error_grid(lc: LayerCache, bits=(8, 4, 2), token_groups=(16, 32, 64), channel_groups=(16, 32, 64)) -> tuple[int, list[SchemeResult]]:
    """Per-token and per-channel quantization of the layer's K and V at each bit width and group
    size, on the first m tokens (see ``grid_window``). Returns (m, results)."""
    m, channel_groups = grid_window(lc.n_tokens, channel_groups)
    head_dim = lc.keys.shape[-1]
    part = lc.window(m)
    schemes = [Scheme("per_token", b, g) for b in bits for g in token_groups if g <= head_dim and head_dim % g == 0]
    schemes += [Scheme("per_channel", b, g) for b in bits for g in channel_groups]
    return m, [evaluate(part, s) for s in schemes]


def token_errors(lc: LayerCache, head: int, scheme: Scheme) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per-token relative error of one KV head's keys and values under ``scheme`` (KIVI's window
    shows as zeros), and how many tokens' keys / values stay in full precision."""
    k_hat, _bytes, k_fp = quantize_tensor(lc.keys, scheme, "key")
    v_hat, _bytes, v_fp = quantize_tensor(lc.values, scheme, "value")

    def per_token(x, x_hat):
        x, x_hat = x[head].float(), x_hat[head].float()  # (n, head_dim)
        return ((x - x_hat).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).cpu().numpy()

    return per_token(lc.keys, k_hat), per_token(lc.values, v_hat), k_fp, v_fp


# ---------------------------------------------------------------------------------------------
# the whole model with a quantized cache


@dataclass
class NextTokenResult:
    scheme: Scheme
    kl: np.ndarray  # (steps,) KL(full ‖ quantized) of the next-token distribution, nats
    top1_agreement: float
    kv_bytes: int  # the whole cache (all layers) at the last step, packed
    kv_bytes_full: int

    def row(self) -> dict:
        return {
            "scheme": self.scheme.label, "axis": self.scheme.axis, "bits": self.scheme.bits, "mean KL": float(self.kl.mean()),
            "max KL": float(self.kl.max()), "top-1 agreement": self.top1_agreement,
            "cache bytes": self.kv_bytes, "of full": self.kv_bytes / self.kv_bytes_full,
        }


def next_token_kl(model, tokenizer, ids, schemes: list[Scheme], new_tokens: int = 8) -> list[NextTokenResult]:
    """Each scheme's store on the whole model (kvviz.runtime.engine), teacher-forced on the full cache's
    greedy tokens: the KL of each step's next-token distribution against the full cache's."""
    ids = [int(i) for i in ids][:MAX_TOKENS]
    full = engine.run(model, tokenizer, ids, "full", max_new_tokens=new_tokens, keep_logprobs=True, stop_at_eos=False, cuda_graphs=False)
    reference = full.extra.pop("logprobs")
    results = []
    for scheme in schemes:
        name, params = scheme.policy()
        trace = engine.run(
            model, tokenizer, ids, name, params=params, forced_ids=full.generated_ids, reference_logprobs=reference, cuda_graphs=False
        )
        results.append(NextTokenResult(
            scheme, np.asarray(trace.kl_to_reference, dtype=np.float64), float(np.mean(trace.top1_agreement)),
            int(trace.kv_bytes[-1]), int(trace.kv_bytes_full[-1]),
        ))
    return results


def next_token_schemes(residual: int, group: int = 32, bits=(8, 4, 2)) -> list[Scheme]:
    """What the next-token comparison runs: per token and per channel at each bit width, then KIVI-4 and KIVI-2."""
    schemes = [Scheme(axis, b, group) for b in bits for axis in ("per_token", "per_channel")]
    return schemes + [Scheme("kivi", b, group, residual) for b in (4, 2)]


# ---------------------------------------------------------------------------------------------
# sentences on the measured numbers (markdown; numbers only)


def axis_summary(results: list[SchemeResult], group: int = 32) -> str:
    """Per channel against per token at each bit width, for one group size, as measured."""
    by = {(r.scheme.axis, r.scheme.bits, r.scheme.group): r for r in results}
    lines = []
    for bits in sorted({r.scheme.bits for r in results}, reverse=True):
        tok, chan = by.get(("per_token", bits, group)), by.get(("per_channel", bits, group))
        if tok is None or chan is None:
            continue

        def cmp(a, b):
            return _("lower") if a < b else _("higher") if a > b else _("equal")

        lines.append("- " + _(
            "**{bits}-bit, G = {group}** ({bytes} either way): key error per channel {chan_key} vs per token {tok_key} "
            "({compared}); value error {chan_value} vs {tok_value}; attention KL {chan_kl} vs {tok_kl}."
        ).format(
            bits=bits, group=group, bytes=format_bytes(tok.bytes), chan_key=f"{chan.key_error:.1%}", tok_key=f"{tok.key_error:.1%}",
            compared=cmp(chan.key_error, tok.key_error), chan_value=f"{chan.value_error:.1%}", tok_value=f"{tok.value_error:.1%}",
            chan_kl=f"{chan.attention_kl:.2g}", tok_kl=f"{tok.attention_kl:.2g}",
        ))
    return _("Measured on this layer:") + "\n" + "\n".join(lines) if lines else ""


def window_summary(lc: LayerCache, scheme: Scheme) -> str:
    """How KIVI holds this layer's cache: what is quantized, what waits in full precision, the bytes."""
    n, R, G = lc.n_tokens, scheme.residual, min(scheme.group, scheme.residual)
    keys_q, values_q = (n // R) * R, max(n - R, 0)
    _held, k_bytes, _tail = quantize_tensor(lc.keys, scheme, "key")
    _held, v_bytes, _tail = quantize_tensor(lc.values, scheme, "value")
    full = 2 * lc.keys.numel() * lc.keys.element_size()
    groups = keys_q // G
    in_groups = _("1 group of {G} tokens") if groups == 1 else _("{groups} groups of {G} tokens")
    return _(
        "Of the {n} tokens, **keys**: {keys_q} quantized per channel in {in_groups}, {keys_fp} in full "
        "precision until {R} have accumulated; **values**: {values_q} quantized per token, the {values_fp} newest in full "
        "precision. Layer {layer} holds {held} instead of {full} ({share}). On a long context the window is a fixed {R} "
        "tokens, so the share of full precision fades: the paper keeps R = 128 at 2 bits."
    ).format(
        n=n, keys_q=keys_q, in_groups=in_groups.format(groups=groups, G=G), keys_fp=n - keys_q, R=R, values_q=values_q, values_fp=n - values_q,
        layer=lc.layer, held=format_bytes(k_bytes + v_bytes), full=format_bytes(full), share=f"{(k_bytes + v_bytes) / full:.0%}",
    )
