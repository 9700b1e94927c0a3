"""Uniform quantization of K/V tensors, with codes packed into uint8.

Codes of ``bits`` bits are packed along the **last** dimension (head_dim for K/V): 8-bit codes are
one per byte, 4-bit codes two per byte, 2-bit codes four per byte. Code ``j`` of a byte sits in
bits ``[j * bits, (j + 1) * bits)`` (the first element in the low bits).

A scale (and, when asymmetric, a zero point) is shared by a group of ``group_size`` consecutive
elements along one dimension ``dim`` (the dimension the statistics are taken over):

  per token    x (kv_heads, n, head_dim), dim=-1: scale (kv_heads, n, head_dim / group_size)
  per channel  x (kv_heads, n, head_dim), dim=1:  scale (kv_heads, n / group_size, head_dim)

Asymmetric: ``zero`` = the group's minimum, ``scale`` = (max - min) / (2**bits - 1),
code = round((x - zero) / scale) in [0, 2**bits - 1], x' = code * scale + zero.
Symmetric: scale = max|x| / (2**(bits-1) - 1), q = round(x / scale) in [-qmax, qmax], stored as
the unsigned code q + 2**(bits-1) (code 0 is unused), x' = q * scale; no zero point is stored.
Scales and zero points are stored in ``scale_dtype`` (the model's compute dtype), and the codes
are computed with the stored (rounded) scale and zero, so dequantization is exactly what a
kernel reading these tensors would compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, overload

import torch

BITS = (2, 4, 8)


def check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {', '.join(map(str, BITS))}, not {bits}.")


_SHIFTS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _shifts(bits: int, device: torch.device) -> torch.Tensor:
    """(8 // bits,) uint8: the bit offset of each code in a byte (made once per device)."""
    key = (bits, torch.device(device))
    if key not in _SHIFTS:
        _SHIFTS[key] = torch.arange(8 // bits, device=device, dtype=torch.uint8) * bits
    return _SHIFTS[key]


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes (..., m) integers in [0, 2**bits) -> (..., m * bits // 8) uint8."""
    check_bits(bits)
    codes = codes.to(torch.uint8)
    if bits == 8:
        return codes
    per_byte = 8 // bits
    if codes.shape[-1] % per_byte:
        raise ValueError(f"cannot pack {codes.shape[-1]} {bits}-bit codes into whole bytes.")
    grouped = codes.unflatten(-1, (-1, per_byte))  # (..., m / per_byte, per_byte)
    return (grouped << _shifts(bits, codes.device)).sum(dim=-1, dtype=torch.uint8)  # disjoint bits: sum == or


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """packed (..., m * bits // 8) uint8 -> codes (..., m) uint8."""
    check_bits(bits)
    if bits == 8:
        return packed
    codes = (packed.unsqueeze(-1) >> _shifts(bits, packed.device)) & ((1 << bits) - 1)  # (..., m / per_byte, per_byte)
    return codes.flatten(-2)


@dataclass
class Quantized:
    """A quantized tensor: packed codes plus the scales (and zero points) of its groups."""

    codes: torch.Tensor  # uint8, the tensor's shape with the last dim packed to last * bits // 8
    scale: torch.Tensor  # the tensor's shape with ``dim`` reduced to its number of groups
    zero: torch.Tensor | None  # like scale; None when symmetric
    bits: int
    dim: int  # non-negative index of the dimension the groups run along
    group_size: int

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.codes, self.scale, self.zero) if t is not None]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def cat(self, other: "Quantized", dim: int) -> "Quantized":
        """Concatenate along ``dim`` (e.g. new tokens): both must hold whole groups along it."""
        if (self.zero is None) != (other.zero is None):
            raise ValueError("cannot concatenate symmetric codes with asymmetric ones")
        zero = None if self.zero is None or other.zero is None else torch.cat([self.zero, other.zero], dim=dim)
        return Quantized(
            torch.cat([self.codes, other.codes], dim=dim),
            torch.cat([self.scale, other.scale], dim=dim),
            zero,
            self.bits,
            self.dim,
            self.group_size,
        )

    def gather_rows(self, index: torch.Tensor) -> "Quantized":
        """Keep rows ``index`` (kv_heads, k) along dim 1 of a (kv_heads, n, ...) per-token tensor
        (groups along the last dim), without re-quantizing."""
        if self.dim == 1:
            raise ValueError("rows of a tensor grouped along dim 1 cannot be gathered one by one.")

        def take(t):
            return t.gather(1, index.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

        zero = None if self.zero is None else take(self.zero)
        return Quantized(take(self.codes), take(self.scale), zero, self.bits, self.dim, self.group_size)


@overload
def quantize(x: torch.Tensor, bits: int, dim: int = -1, group_size: int | None = None, symmetric: bool = False,
             scale_dtype: torch.dtype | None = None, return_dequantized: Literal[False] = False) -> Quantized: ...
@overload
def quantize(x: torch.Tensor, bits: int, dim: int = -1, group_size: int | None = None, symmetric: bool = False,
             scale_dtype: torch.dtype | None = None, *, return_dequantized: Literal[True]) -> tuple[Quantized, torch.Tensor]: ...
def quantize(
    x: torch.Tensor,
    bits: int,
    dim: int = -1,
    group_size: int | None = None,
    symmetric: bool = False,
    scale_dtype: torch.dtype | None = None,
    return_dequantized: bool = False,
) -> Quantized | tuple[Quantized, torch.Tensor]:
    """Quantize ``x`` with one scale per ``group_size`` consecutive elements along ``dim``.

    ``group_size`` None = the whole dimension; it must divide the dimension's size. The last
    dim times ``bits`` must be a multiple of 8 (it is packed). A constant group gets the
    smallest positive scale (its values are then exact). Returns the ``Quantized`` tensor, or
    ``(Quantized, x')`` with x' = the dequantized values in float32 when ``return_dequantized``.
    """
    check_bits(bits)
    dim = dim % x.dim()
    size = x.shape[dim]
    group_size = size if group_size is None else group_size
    if group_size <= 0 or size % group_size:
        raise ValueError(f"group size {group_size} does not divide the dimension of size {size}.")
    scale_dtype = scale_dtype or x.dtype
    tiny = torch.finfo(scale_dtype).tiny
    xg = x.float().unflatten(dim, (size // group_size, group_size))  # group members along dim + 1
    if symmetric:
        qmax = (1 << (bits - 1)) - 1
        scale = (xg.abs().amax(dim=dim + 1) / qmax).clamp_min(tiny).to(scale_dtype)  # (..., n_groups, ...)
        s = scale.float().unsqueeze(dim + 1)
        q = (xg / s).round_().clamp_(-qmax, qmax)
        x_hat = q * s if return_dequantized else None
        q += 1 << (bits - 1)
        zero = None
    else:
        lo, hi = torch.aminmax(xg, dim=dim + 1)
        zero = lo.to(scale_dtype)
        z = zero.float()
        scale = ((hi - z) / ((1 << bits) - 1)).clamp_min(tiny).to(scale_dtype)
        z, s = z.unsqueeze(dim + 1), scale.float().unsqueeze(dim + 1)
        q = ((xg - z) / s).round_().clamp_(0, (1 << bits) - 1)
        x_hat = torch.addcmul(z, q, s) if return_dequantized else None
    quantized = Quantized(pack(q.flatten(dim, dim + 1), bits), scale, zero, bits, dim, group_size)
    if x_hat is not None:  # return_dequantized
        return quantized, x_hat.flatten(dim, dim + 1)
    return quantized


def dequantize(q: Quantized, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The tensor the codes stand for, computed in float32 and returned in ``dtype``."""
    dim = q.dim
    codes = unpack(q.codes, q.bits).unflatten(dim, (-1, q.group_size)).float()
    scale = q.scale.float().unsqueeze(dim + 1)
    if q.zero is None:
        x = (codes - (1 << (q.bits - 1))) * scale
    else:
        x = torch.addcmul(q.zero.float().unsqueeze(dim + 1), codes, scale)
    return x.flatten(dim, dim + 1).to(dtype)


class ErrorMeter:
    """Running relative Frobenius error ||x - x'|| / ||x|| of everything appended, kept on the
    device (float32 sums) and read once, at the end of a run."""

    def __init__(self, device):
        self.err = torch.zeros((), dtype=torch.float32, device=device)
        self.ref = torch.zeros((), dtype=torch.float32, device=device)

    def add(self, x: torch.Tensor, x_hat: torch.Tensor | None = None) -> None:
        """Count ``x`` (original values) in the denominator and, when given, the error of its
        reconstruction ``x_hat`` (float32) in the numerator."""
        xf = x.float()
        self.ref += xf.square().sum()
        if x_hat is not None:
            self.err += (xf - x_hat).square().sum()

    def add_error(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        """Count the reconstruction error of ``x`` by ``x_hat`` only (x was counted before)."""
        self.err += (x.float() - x_hat.float()).square().sum()

    def value(self) -> float:
        ref = float(self.ref)  # read once, at the end of a run
        return float(self.err) ** 0.5 / ref**0.5 if ref > 0 else 0.0


class QuantizedStream:
    """Keys or values of one layer as they arrive: a quantized part followed by a full-precision
    tail, (kv_heads, n, head_dim) together, in token order.

    per_channel=False (per token): each token is quantized on its own, one scale per
    ``group_size`` channels; the ``residual`` most recent tokens wait in full precision (0 = none).
    per_channel=True: each channel gets one scale per group of ``group_size`` tokens; tokens wait
    in full precision until ``residual`` of them (a multiple of ``group_size``; 0 = one group)
    have accumulated, and are then quantized together, ``residual / group_size`` groups at once
    (KIVI's keys: jy-yuan/KIVI, commit 876b4d2, models/llama_kivi.py, lines 131-136 and 193-204).

    ``after_read`` (KIVI): the tokens an append sends out of the tail are quantized after this
    step's attention read them, as KIVI's code does (it quantizes after the attention, lines
    131 and 174): ``materialize`` right after the append returns them in full precision, the
    new token included; the stream holds them quantized from then on. Without it the attention
    reads them already quantized.
    """

    def __init__(self, kv_heads, head_dim, dtype, device, *, bits, per_channel, group_size, symmetric, residual=0, after_read=False):
        check_bits(bits)
        if not per_channel and head_dim % group_size:
            raise ValueError(f"group size {group_size} does not divide head_dim {head_dim}.")
        if per_channel and residual % group_size:
            raise ValueError(f"the residual {residual} is not a multiple of the group size {group_size}.")
        self.bits, self.per_channel, self.group_size = bits, per_channel, group_size
        self.symmetric, self.residual, self.dtype, self.after_read = symmetric, residual, dtype, after_read
        self.chunk = (residual or group_size) if per_channel else 1  # tokens quantized together
        self.read: torch.Tensor | None = None  # what this step's attention reads (after_read)
        dim = 1 if per_channel else 2
        scale_shape = (kv_heads, 0, head_dim) if per_channel else (kv_heads, 0, head_dim // group_size)
        self.q = Quantized(
            torch.empty(kv_heads, 0, head_dim * bits // 8, dtype=torch.uint8, device=device),
            torch.empty(scale_shape, dtype=dtype, device=device),
            None if symmetric else torch.empty(scale_shape, dtype=dtype, device=device),
            bits,
            dim,
            group_size,
        )
        self.empty_q = self.q
        self.tail = torch.empty(kv_heads, 0, head_dim, dtype=dtype, device=device)  # full precision
        self.meter = ErrorMeter(device)

    def __len__(self) -> int:
        return self.q.codes.shape[1] + self.tail.shape[1]

    @property
    def n_quantized(self) -> int:
        return self.q.codes.shape[1]

    def append(self, x: torch.Tensor) -> None:
        """x (kv_heads, q, head_dim) in the compute dtype."""
        self.meter.add(x)
        self.tail = x if self.tail.shape[1] == 0 else torch.cat([self.tail, x], dim=1)
        self.read = None
        if self.after_read and self._due():  # kept for this step's attention: the tail before quantizing
            self.read = self.tail if self.n_quantized == 0 else torch.cat([dequantize(self.q, self.dtype), self.tail], dim=1)
        self._flush(record=True)

    def _due(self) -> int:
        """Tokens of the tail to quantize now: whole chunks (per channel) or all but the
        ``residual`` newest tokens (per token)."""
        t = self.tail.shape[1]
        return (t // self.chunk) * self.chunk if self.per_channel else max(t - self.residual, 0)

    def _flush(self, record: bool) -> None:
        """Quantize what leaves the tail (``_due``). Sizes are host integers: no synchronization."""
        m = self._due()
        if m == 0:
            return
        chunk = self.tail[:, :m]
        q, chunk_hat = quantize(
            chunk, self.bits, self.q.dim, self.group_size, self.symmetric, self.dtype, return_dequantized=True
        )
        if record:
            self.meter.add_error(chunk, chunk_hat)
        self.q = q if self.q.codes.shape[1] == 0 else self.q.cat(q, dim=1)
        self.tail = self.tail[:, m:]

    def materialize(self) -> torch.Tensor:
        """(kv_heads, n, head_dim) in the compute dtype: what the attention reads (with
        ``after_read``, the first call after an append reads the tokens it quantized as they were)."""
        if self.read is not None:
            read, self.read = self.read, None
            return read
        return self.held()

    def held(self) -> torch.Tensor:
        """(kv_heads, n, head_dim): what the stream holds, dequantized, in the compute dtype."""
        return torch.cat([dequantize(self.q, self.dtype), self.tail], dim=1)

    def keep(self, keep: torch.Tensor, replacement: torch.Tensor | None = None) -> None:
        """Keep entries ``keep`` (kv_heads, k); ``replacement`` (kv_heads, k, head_dim) replaces them.

        Per token without a residual, the packed rows and their scales are gathered as they are.
        Otherwise the kept entries are dequantized, gathered and quantized again in the same
        layout (per token this is exact up to float rounding: the codes of a quantized row map
        back to themselves; per channel the token groups are re-formed, which adds error).
        """
        self.read = None
        if replacement is None and not self.per_channel and self.residual == 0:
            self.q = self.q.gather_rows(keep)
            return
        if replacement is None:
            x = self.materialize()
            replacement = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        self.q = self.empty_q
        self.tail = replacement.to(self.dtype)
        self._flush(record=False)

    def full_precision(self) -> int:
        """Tokens of the tail, held in full precision."""
        return self.tail.shape[1]

    def tensors(self) -> list[torch.Tensor]:
        return self.q.tensors() + [self.tail]
