"""KIVI: 2- or 4-bit keys per channel and values per token, with a full-precision recent window."""

from dataclasses import dataclass

from kvviz.policies.params import PolicyError, param
from kvviz.policies.store import Storage, Store
from kvviz.policies.quant import QuantStore
from kvviz.storage.quantize import QuantizedStream


@dataclass
class Kivi(Storage):
    name = "kivi"
    family = "quantization"
    paper = "Liu et al., 2024. KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache"
    summary = """Keys are quantized per channel (outlier channels get their own scale) and
    values per token, asymmetrically, at 2 or 4 bits, packed into bytes. Following the paper's
    algorithm, the keys are quantized in groups of `residual` (R) tokens per channel: the tokens
    of the group being filled (fewer than R) stay in full precision until it is full. The
    values of the R most recent tokens stay in full precision; older values are quantized per
    token, one scale and zero point per `group_size` channels. As in the paper's code, the
    prompt's own attention at prefill reads the original keys and values. kvviz dequantizes
    for attention instead of using fused kernels. Composes with eviction (`snapkv+kivi`): kept entries are
    dequantized, gathered and requantized in the same layout (exact for the per-token values up
    to float rounding; the key groups are re-formed, adding error). No GQA aggregation."""

    bits: int = param(2, "Bits per code: 2 or 4.", choices=(2, 4))
    residual: int = param(32, "R: recent tokens kept in full precision, and the key group length in tokens (the paper uses 128; 32 lets short prompts show quantization).", min=1, max=4096)
    group_size: int = param(32, "Channels sharing one scale when quantizing a value (the paper's G; capped at head_dim, must divide it).", min=1, max=4096)

    def make_store(self, layer_idx, n_layers, kv_heads, head_dim, dtype, device) -> Store:
        group = min(self.group_size, head_dim)
        if head_dim % group:
            raise PolicyError(f"kivi: group_size {group} does not divide the head dimension {head_dim}.")
        keys = QuantizedStream(kv_heads, head_dim, dtype, device, bits=self.bits, per_channel=True, group_size=self.residual, symmetric=False)
        values = QuantizedStream(
            kv_heads, head_dim, dtype, device, bits=self.bits, per_channel=False, group_size=group, symmetric=False, residual=self.residual
        )
        return QuantStore(kv_heads, head_dim, dtype, device, keys, values)
