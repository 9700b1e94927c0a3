"""Low-rank keys and values: each head's entries as coefficients on an SVD basis from the prompt."""

from dataclasses import dataclass

import torch

from kvviz.i18n import N_, _
from kvviz.policies.params import PolicyError, param
from kvviz.policies.store import LayerError, Storage, Store
from kvviz.storage.quantize import ErrorMeter


class LowRankStore(Store):
    """Per KV head a basis (head_dim, r) and the coefficients (n, r) of every entry on it."""

    def __init__(self, kv_heads, head_dim, dtype, device, rank: int):
        self.kv_heads, self.head_dim, self.dtype, self.device = kv_heads, head_dim, dtype, device
        self.rank = rank
        self.key_basis: torch.Tensor | None = None  # (kv_heads, head_dim, r), from the first append
        self.value_basis: torch.Tensor | None = None
        self.key_coef = torch.empty(kv_heads, 0, rank, dtype=dtype, device=device)  # (kv_heads, n, r)
        self.value_coef = torch.empty(kv_heads, 0, rank, dtype=dtype, device=device)
        self.key_error, self.value_error = ErrorMeter(device), ErrorMeter(device)

    def __len__(self) -> int:
        return self.key_coef.shape[1]

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        """x (kv_heads, n, head_dim) -> its top right singular vectors (kv_heads, head_dim, r).
        A prompt shorter than the rank gives fewer directions; the basis is padded with zeros.
        Runs once per layer, after prefill (on CUDA the SVD synchronizes, once; decode does not)."""
        _, _, vh = torch.linalg.svd(x.float(), full_matrices=False)  # vh (kv_heads, min(n, d), d)
        v = vh[:, : self.rank].transpose(1, 2)  # (kv_heads, d, <= r)
        if v.shape[-1] < self.rank:
            v = torch.nn.functional.pad(v, (0, self.rank - v.shape[-1]))
        return v.to(self.dtype)

    def project(self, x, basis, meter):
        coef = x.to(self.dtype) @ basis  # (kv_heads, q, r)
        meter.add(x, (coef @ basis.transpose(1, 2)).float())
        return coef

    def append(self, keys, values):
        if self.key_basis is None:
            self.key_basis, self.value_basis = self.basis(keys), self.basis(values)
        self.key_coef = torch.cat([self.key_coef, self.project(keys, self.key_basis, self.key_error)], dim=1)
        self.value_coef = torch.cat([self.value_coef, self.project(values, self.value_basis, self.value_error)], dim=1)

    def bases(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(key basis, value basis), set by the first append; RuntimeError before it."""
        if self.key_basis is None or self.value_basis is None:
            raise RuntimeError("the low-rank store has no basis before its first append")
        return self.key_basis, self.value_basis

    def materialize(self):
        if self.key_basis is None:
            empty = torch.empty(self.kv_heads, 0, self.head_dim, dtype=self.dtype, device=self.device)
            return empty, empty
        key_basis, value_basis = self.bases()
        return self.key_coef @ key_basis.transpose(1, 2), self.value_coef @ value_basis.transpose(1, 2)

    def keep(self, keep, keys=None, values=None):
        """Gather the kept coefficient rows (the basis is per head, so eviction composes);
        merged replacements are projected on the basis."""
        idx = keep.unsqueeze(-1).expand(-1, -1, self.rank)
        key_basis, value_basis = self.bases()
        self.key_coef = (keys.to(self.dtype) @ key_basis) if keys is not None else self.key_coef.gather(1, idx)
        self.value_coef = (values.to(self.dtype) @ value_basis) if values is not None else self.value_coef.gather(1, idx)

    def row_paths(self):
        return [("key_coef",), ("value_coef",)]  # the bases are fixed after the prefill

    def tensors(self):
        bases = [b for b in (self.key_basis, self.value_basis) if b is not None]
        return [self.key_coef, self.value_coef] + bases

    def error(self) -> LayerError:
        """Relative Frobenius error of the projection of every key and value appended."""
        return LayerError(key=self.key_error.value(), value=self.value_error.value())


@dataclass
class LowRank(Storage):
    name = "lowrank"
    family = N_("low-rank")
    paper = "Saxena et al., 2024. Eigen Attention: Attention in Low-Rank Space for KV Cache Compression (cf. Palu, Chang et al., 2024)"
    paper_url = "https://arxiv.org/abs/2408.05646"
    summary = N_("""Projects each KV head's keys and values on a rank-`rank` basis: the top right
    singular vectors of that head's prompt keys (and, separately, values), computed by an SVD
    right after prefill. Generated tokens are projected on the same basis. The cache holds the
    coefficients (n x rank per head) and the bases (head_dim x rank per head); attention reads
    coefficients x basis. Papers calibrate the basis offline on a dataset and fold it into the
    projection weights; kvviz fits it to the prompt itself, without centering, and reconstructs
    instead of computing attention in the low-rank space. Eviction composes (coefficient rows
    are gathered). No GQA aggregation: the basis is per KV head.""")

    rank: int = param(16, N_("Directions kept per KV head (below head_dim: at head_dim it holds more than the full cache)."), min=1, max=1024)

    def make_store(self, layer_idx, n_layers, kv_heads, head_dim, dtype, device) -> Store:
        if self.rank >= head_dim:  # n x rank coefficients and a head_dim x rank basis, against n x head_dim
            raise PolicyError(_(
                "lowrank: rank {rank} is not below the head dimension {head_dim}, so it would hold more bytes"
                " than the full cache; use a rank of at most {most}.").format(rank=self.rank, head_dim=head_dim, most=head_dim - 1)
            )
        return LowRankStore(kv_heads, head_dim, dtype, device, self.rank)
