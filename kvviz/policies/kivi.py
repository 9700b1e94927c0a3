"""KIVI: 2- or 4-bit keys per channel and values per token, with a full-precision recent window.

Follows the authors' code (jy-yuan/KIVI, commit 876b4d2): ``LlamaAttention_KIVI.forward`` in
models/llama_kivi.py (prefill: keys lines 193-204, values 210-220; decode: keys 121-136, values
165-179) and ``triton_quantize_and_pack_along_last_dim`` in quant/new_pack.py (lines 217-252).
"""

from dataclasses import dataclass

from kvviz.i18n import N_, _
from kvviz.policies.params import PolicyError, param
from kvviz.policies.store import Storage, Store
from kvviz.policies.quant import QuantStore
from kvviz.storage.quantize import QuantizedStream


@dataclass
class Kivi(Storage):
    name = "kivi"
    family = N_("quantization")
    paper_url = "https://arxiv.org/abs/2402.02750"
    paper = "Liu et al., 2024. KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache"
    summary = N_("""Keys are quantized per channel (outlier channels get their own scale) and
    values per token, asymmetrically (scale and minimum), at 2 or 4 bits, packed into bytes,
    as in the authors' code. Keys: each channel gets one scale and zero point per `group_size`
    (G) tokens; new keys wait in full precision until `residual` (R) of them have accumulated,
    and are then quantized together, R / G groups at once (at prefill, all but the last
    prompt_len mod R). Values: the R most recent stay in full precision; older values are
    quantized per token, one scale and zero point per G channels. As in KIVI's code, the tokens
    a step quantizes are quantized after that step's attention (the attention reads them, and
    the new token, in full precision), and the prompt's own attention at prefill reads the
    original keys and values. kvviz dequantizes for attention instead of using fused kernels.
    Composes with eviction (`snapkv+kivi`): kept entries are dequantized, gathered and
    requantized in the same layout (exact for the per-token values up to float rounding; the
    key groups are re-formed, adding error). No GQA aggregation. Differs from the released code
    on purpose: a residual below group_size quantizes keys in groups of R tokens (KIVI's code
    asserts R % G == 0), so short prompts can show quantization.""")

    bits: int = param(2, N_("Bits per code: 2 or 4."), choices=(2, 4))
    residual: int = param(32, N_("R: the newest values kept in full precision, and how many new keys wait in full precision before they are quantized (a multiple of group_size; the paper uses 128; 32 lets short prompts show quantization)."), min=1, max=4096)
    group_size: int = param(32, N_("G: tokens of a key channel, and channels of a value, sharing one scale and zero point (capped at head_dim, must divide it and the residual)."), min=1, max=4096)

    def make_store(self, layer_idx, n_layers, kv_heads, head_dim, dtype, device) -> Store:
        keys, values = streams(self.bits, self.residual, self.group_size, kv_heads, head_dim, dtype, device)
        return QuantStore(kv_heads, head_dim, dtype, device, keys, values)


def streams(bits, residual, group_size, kv_heads, head_dim, dtype, device) -> tuple[QuantizedStream, QuantizedStream]:
    """KIVI's key and value streams (the store's, and the Quantization lab's). The value group
    is capped at head_dim and the key group at R (KIVI's code asserts R % G == 0)."""
    value_group, key_group = min(group_size, head_dim), min(group_size, residual)
    if head_dim % value_group:
        raise PolicyError(_("kivi: group_size {group} does not divide the head dimension {head_dim}.").format(group=value_group, head_dim=head_dim))
    if residual % key_group:
        raise PolicyError(_("kivi: the residual {residual} is not a multiple of group_size {group} (KIVI quantizes whole key groups).").format(
            residual=residual, group=key_group))
    common = dict(bits=bits, symmetric=False, residual=residual, after_read=True)
    keys = QuantizedStream(kv_heads, head_dim, dtype, device, per_channel=True, group_size=key_group, **common)
    values = QuantizedStream(kv_heads, head_dim, dtype, device, per_channel=False, group_size=value_group, **common)
    return keys, values
