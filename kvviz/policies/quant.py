"""Uniform quantization of keys and values, packed into bytes."""

from dataclasses import dataclass

from kvviz.i18n import N_, _
from kvviz.storage.fixed_capacity import FixedStreams
from kvviz.policies.params import PolicyError, param
from kvviz.policies.store import LayerError, Storage, Store
from kvviz.storage.quantize import QuantizedStream


class QuantStore(Store):
    """Keys and values as two quantized streams (see ``kvviz.storage.quantize.QuantizedStream``)."""

    full_precision_prefill = True

    def __init__(self, kv_heads, head_dim, dtype, device, key_stream: QuantizedStream, value_stream: QuantizedStream):
        self.kv_heads, self.head_dim, self.dtype, self.device = kv_heads, head_dim, dtype, device
        self.k, self.v = key_stream, value_stream

    def __len__(self) -> int:
        return len(self.k)

    def append(self, keys, values):
        self.k.append(keys)
        self.v.append(values)

    def materialize(self):
        return self.k.materialize(), self.v.materialize()

    def keep(self, keep, keys=None, values=None):
        self.k.keep(keep, keys)
        self.v.keep(keep, values)

    def tensors(self):
        return self.k.tensors() + self.v.tensors()

    def row_paths(self):
        """Per token without a residual window, each token is quantized as it arrives: its codes,
        scales and zero points are new rows. Tokens that wait in full precision (per channel,
        KIVI's residual) change the tail's length instead (``hold_fixed`` holds those streams)."""
        paths = []
        for name, stream in (("k", self.k), ("v", self.v)):
            if stream.per_channel or stream.residual:
                return None
            paths += [(name, "q", "codes"), (name, "q", "scale")] + ([(name, "q", "zero")] if stream.q.zero is not None else [])
        return paths

    def per_token(self) -> bool:
        """Per token with no residual window, quantized as it arrives (not after the step's read)."""
        return all(not s.per_channel and not s.residual and not s.after_read for s in (self.k, self.v))

    def can_hold_fixed(self) -> bool:
        return True

    def hold_fixed(self, capacity, n, length):
        if self.row_paths() is not None:
            return super().hold_fixed(capacity, n, length)
        return FixedStreams(self, capacity, length)

    def error(self) -> LayerError:
        """Relative Frobenius error of every key and value appended, and the tokens each stream
        still holds in full precision (a per-channel group waiting to fill, a residual window)."""
        return LayerError(
            key=self.k.meter.value(),
            value=self.v.meter.value(),
            full_precision_keys=self.k.full_precision(),
            full_precision_values=self.v.full_precision(),
        )


@dataclass
class Quant(Storage):
    name = "quant"
    family = N_("quantization")
    paper = (
        "Jacob et al., 2018. Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only"
        " Inference (uniform affine quantization); Sheng et al., 2023. FlexGen (group-wise 4-bit KV cache)"
    )
    paper_url = "https://arxiv.org/abs/2303.06865"  # FlexGen, for the KV cache; Jacob et al.: arXiv 1712.05877
    summary = N_("""Stores keys and values as `bits`-bit integer codes (8, 4 or 2 bits) packed into
    bytes (4-bit: two codes per byte, 2-bit: four), plus a scale and, unless symmetric, a zero
    point per group of `group_size` elements, in the model's dtype. `per_token` gives each token
    its own scales, one per `group_size` channels; `per_channel` gives each channel one scale
    per group of `group_size` tokens, and tokens wait in full precision until their group is
    full. The prompt's own attention at prefill reads the original keys and values (as in KIVI
    and quantized caches generally); from then on attention reads the dequantized values, the
    new token's own included. Composes with eviction (`snapkv+quant`): the selector chooses at
    prefill from the same attention as without quantization;
    per-token rows are gathered as they are; per-channel groups are re-formed from the
    dequantized kept tokens, which adds error that the reported quantization error does not
    count. Quantization applies the same way to every KV head; no GQA aggregation is involved.""")

    bits: int = param(4, N_("Bits per code: 8, 4 or 2."), choices=(8, 4, 2))
    axis: str = param("per_token", N_("What shares a scale: the channels of a token, or the tokens of a channel."), choices=("per_token", "per_channel"))
    symmetric: bool = param(False, N_("Symmetric (scale only, codes centred on 0) instead of asymmetric (scale and zero point)."))
    group_size: int = param(32, N_("Elements per scale: channels of a token (per_token; capped at head_dim, must divide it) or tokens of a channel (per_channel)."), min=1, max=4096)

    def make_store(self, layer_idx, n_layers, kv_heads, head_dim, dtype, device) -> Store:
        per_channel = self.axis == "per_channel"
        group = self.group_size if per_channel else min(self.group_size, head_dim)
        if not per_channel and head_dim % group:
            raise PolicyError(_("quant: group_size {group} does not divide the head dimension {head_dim}.").format(group=group, head_dim=head_dim))

        def stream():
            return QuantizedStream(kv_heads, head_dim, dtype, device, bits=self.bits, per_channel=per_channel, group_size=group, symmetric=self.symmetric)

        return QuantStore(kv_heads, head_dim, dtype, device, stream(), stream())
