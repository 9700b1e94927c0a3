"""TurboQuant (MSE): a random rotation, then each coordinate quantized on a fixed codebook."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from kvviz.i18n import N_
from kvviz.policies.params import param
from kvviz.policies.store import LayerError, Storage, Store
from kvviz.storage.quantize import ErrorMeter, pack, unpack


@functools.cache
def codebook(head_dim: int, bits: int) -> tuple[float, ...]:
    """Lloyd-Max centroids (2**bits, ascending) for one coordinate of a uniformly random unit
    vector in R^head_dim, whose density is proportional to (1 - t^2)^((head_dim - 3) / 2) on
    [-1, 1]: TurboQuant's scalar quantizer. Lloyd's iterations on a fine grid, in float64."""
    t = np.linspace(-1, 1, 200_001)
    w = np.clip(1 - t * t, 0, None) ** ((head_dim - 3) / 2)
    w /= w.sum()
    sd = 1 / math.sqrt(head_dim)
    c = np.linspace(-2.5 * sd, 2.5 * sd, 2**bits)
    for _ in range(500):
        cell = np.searchsorted((c[1:] + c[:-1]) / 2, t)
        mass = np.bincount(cell, w, minlength=c.size)
        new = np.bincount(cell, w * t, minlength=c.size) / np.maximum(mass, 1e-300)
        if np.abs(new - c).max() < 1e-13:
            break
        c = new
    return tuple(float(x) for x in new)


def rotation(head_dim: int, seed: int, device) -> torch.Tensor:
    """A random orthogonal (head_dim, head_dim) float32 matrix: Q of the QR of a Gaussian matrix
    (signs fixed by R's diagonal: Haar-distributed), from ``seed`` on the CPU (the same everywhere)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(head_dim, head_dim, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float().to(device)


class TurboQuantStore(Store):
    """Per entry and KV head: its norm in the compute dtype, and the ``bits``-bit codes of its
    rotated unit vector's coordinates, packed. ``rotation`` is counted in the layer that holds it."""

    full_precision_prefill = True  # as quantized caches: the prompt's attention reads its originals

    def __init__(self, kv_heads, head_dim, dtype, device, bits: int, rot: torch.Tensor, owns_rotation: bool):
        self.kv_heads, self.head_dim, self.dtype, self.device = kv_heads, head_dim, dtype, device
        self.bits, self.rotation, self.owns_rotation = bits, rot, owns_rotation  # rot (d, d) float32
        c = torch.tensor(codebook(head_dim, bits), dtype=torch.float32, device=device)
        self.centroids, self.edges = c, (c[1:] + c[:-1]) / 2  # (2**bits,), (2**bits - 1,)
        packed = head_dim * bits // 8
        self.k_codes = torch.empty(kv_heads, 0, packed, dtype=torch.uint8, device=device)  # (kv_heads, n, d * bits / 8)
        self.v_codes = torch.empty(kv_heads, 0, packed, dtype=torch.uint8, device=device)
        self.k_norm = torch.empty(kv_heads, 0, dtype=dtype, device=device)  # (kv_heads, n)
        self.v_norm = torch.empty(kv_heads, 0, dtype=dtype, device=device)
        self.key_error, self.value_error = ErrorMeter(device), ErrorMeter(device)

    def __len__(self) -> int:
        return self.k_norm.shape[1]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (kv_heads, q, d) -> packed codes (kv_heads, q, d * bits / 8) uint8, norms (kv_heads, q)."""
        norm = x.float().norm(dim=-1).to(self.dtype)
        unit = x.float() / norm.float().clamp_min(1e-30)[..., None]
        codes = torch.bucketize(unit @ self.rotation.T, self.edges)  # nearest centroid per coordinate
        return pack(codes, self.bits), norm

    def decode(self, codes: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        y = self.centroids[unpack(codes, self.bits).long()]  # (kv_heads, n, d), rotated coordinates
        return ((y @ self.rotation) * norm.float()[..., None]).to(self.dtype)

    def append(self, keys, values):
        kc, kn = self.encode(keys)
        vc, vn = self.encode(values)
        self.key_error.add(keys, self.decode(kc, kn).float())
        self.value_error.add(values, self.decode(vc, vn).float())
        self.k_codes, self.k_norm = torch.cat([self.k_codes, kc], 1), torch.cat([self.k_norm, kn], 1)
        self.v_codes, self.v_norm = torch.cat([self.v_codes, vc], 1), torch.cat([self.v_norm, vn], 1)

    def materialize(self):
        return self.decode(self.k_codes, self.k_norm), self.decode(self.v_codes, self.v_norm)

    def keep(self, keep, keys=None, values=None):
        """Gather the kept rows; merged replacements are encoded afresh."""
        def rows(t):
            return t.gather(1, keep.unsqueeze(-1).expand(-1, -1, t.shape[-1]) if t.dim() == 3 else keep)

        self.k_codes, self.k_norm = self.encode(keys) if keys is not None else (rows(self.k_codes), rows(self.k_norm))
        self.v_codes, self.v_norm = self.encode(values) if values is not None else (rows(self.v_codes), rows(self.v_norm))

    def tensors(self):
        return [self.k_codes, self.k_norm, self.v_codes, self.v_norm] + ([self.rotation] if self.owns_rotation else [])

    def row_paths(self):
        return [("k_codes",), ("k_norm",), ("v_codes",), ("v_norm",)]

    def error(self) -> LayerError:
        """Relative Frobenius error of every key and value appended; no token waits in full precision."""
        return LayerError(key=self.key_error.value(), value=self.value_error.value(), full_precision_keys=0, full_precision_values=0)


@dataclass
class TurboQuant(Storage):
    name = "turboquant"
    family = N_("quantization")
    paper = "Zandieh et al., 2025. TurboQuant: Online Vector Quantization with Near-optimal Distortion Rate"
    paper_url = "https://arxiv.org/abs/2504.19874"
    summary = N_("""TurboQuant's MSE quantizer on every key and value: the vector's norm is stored in
    the model's dtype, its unit vector is rotated by a random orthogonal matrix (one for the
    model, from `seed`), after which each coordinate follows the same known distribution (that
    of a coordinate of a random point on the sphere), and each coordinate is replaced by the
    nearest of 2^`bits` centroids of that distribution (Lloyd-Max, computed once), stored as
    packed `bits`-bit codes. No scales, no zero points, no calibration: bytes per entry are
    head_dim x bits / 8 plus one norm; the rotation (head_dim^2 float32) is counted once, in
    layer 0. The prompt's own attention at prefill reads the originals (as KIVI and quantized
    caches); from then on attention reads the decoded vectors. Composes with eviction
    (`snapkv+turboquant`). The paper's inner-product variant (a 1-bit QJL sketch of the
    residual) is not included.""")

    bits: int = param(4, N_("Bits per coordinate: 4 or 2 (packed two or four to a byte)."), choices=(4, 2))
    seed: int = param(0, N_("Seed of the random rotation."), min=0, max=2**31 - 1)

    def make_store(self, layer_idx, n_layers, kv_heads, head_dim, dtype, device) -> Store:
        return TurboQuantStore(kv_heads, head_dim, dtype, device, self.bits, rotation(head_dim, self.seed, device), layer_idx == 0)
