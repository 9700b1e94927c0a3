"""Stores: a policy that decides how the kept entries of a layer are held: quantized and packed,
projected to a low rank, pooled into fewer heads. ``Storage.make_store(...)`` builds one per
layer; a lossy store reports its reconstruction error as a ``LayerError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvviz.policies.params import Policy
from kvviz.storage.fixed_capacity import FixedRows


@dataclass(frozen=True)
class LayerError:
    """A lossy store's reconstruction error in one layer (see ``kvviz.record.trace.StoreError``)."""

    key: float  # ‖k − k̂‖ / ‖k‖ over every key appended
    value: float
    full_precision_keys: int | None = None  # newest tokens whose keys are held unquantized; None: not a quantizer
    full_precision_values: int | None = None


class Store:
    """How one layer holds its entries. The default holds them as they are."""

    # True for a store whose prefill attention reads the prompt's original keys and values, and
    # which holds them compressed from then on: what quantized caches do (KIVI, transformers'
    # QuantizedCache, vLLM's fp8 cache quantize what they store after the prompt's attention).
    # False where the compression is part of the model (pooled heads, a projection in the weights).
    full_precision_prefill: ClassVar[bool] = False
    # True for a store that reads the prompt's queries (``observe_queries``, before the prompt's
    # keys are appended): ThinK scores key channels with them.
    needs_prefill_queries: ClassVar[bool] = False

    def __init__(self, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        self.kv_heads, self.head_dim, self.dtype, self.device = kv_heads, head_dim, dtype, device
        self.keys = torch.empty(kv_heads, 0, head_dim, dtype=dtype, device=device)
        self.values = torch.empty(kv_heads, 0, head_dim, dtype=dtype, device=device)

    def __len__(self) -> int:
        return self.keys.shape[1]

    def observe_queries(self, queries: torch.Tensor) -> None:
        """The prefill's queries (q_heads, q, head_dim), RoPE applied; only for ``needs_prefill_queries``."""

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys, values: (kv_heads, q, head_dim) in the compute dtype."""
        self.keys = torch.cat([self.keys, keys], dim=1)
        self.values = torch.cat([self.values, values], dim=1)

    def materialize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values in the compute dtype, (kv_heads, n, head_dim) each."""
        return self.keys, self.values

    def keep(self, keep: torch.Tensor, keys: torch.Tensor | None = None, values: torch.Tensor | None = None) -> None:
        """Keep the entries ``keep`` (kv_heads, k); ``keys``/``values`` replace them when given (merging)."""
        idx = keep.unsqueeze(-1).expand(-1, -1, self.head_dim)
        self.keys = keys if keys is not None else self.keys.gather(1, idx)
        self.values = values if values is not None else self.values.gather(1, idx)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the store holds (for kv_bytes)."""
        return [self.keys, self.values]

    def row_paths(self) -> list[tuple[str, ...]] | None:
        """Attribute paths of the tensors that grow by one row (dim 1) per appended token, and
        only those: ``kvviz.storage.fixed_capacity`` holds them in preallocated buffers. None for a store
        that cannot be held so (one whose appends also change other tensors' shapes)."""
        return [("keys",), ("values",)]

    def per_token(self) -> bool:
        """Whether each appended token is held, and read by the attention, in a form that depends
        on that token alone: appending tokens one at a time or several together then holds the
        same (``kvviz.runtime.forced_chunks`` reads a forced continuation in chunks only then).
        The plain store does; a subclass says so itself."""
        return type(self) is Store

    def can_hold_fixed(self) -> bool:
        """Whether ``hold_fixed`` can move this store into fixed-capacity buffers."""
        return self.row_paths() is not None

    def hold_fixed(self, capacity: int, n: int, length: torch.Tensor):
        """Move the ``n`` entries held into buffers of ``capacity`` (``kvviz.storage.fixed_capacity``);
        ``length`` (1,) long on the device counts the entries held, advanced by the layer.
        Returns what appends to the buffers (``FixedRows`` over ``row_paths``)."""
        paths = self.row_paths()
        if paths is None:
            raise ValueError(f"{type(self).__name__} cannot be held in fixed-capacity buffers (its can_hold_fixed() is False)")
        return FixedRows(self, paths, capacity, n)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def error(self) -> LayerError | None:
        """The reconstruction error of a lossy store; None for one that holds entries as they are."""
        return None


@dataclass
class Storage(Policy):
    """A policy that changes how entries are stored."""

    kind: ClassVar[str] = "store"
    needs_prefill_queries: ClassVar[bool] = False  # whether its stores read the prompt's queries

    def make_store(self, layer_idx: int, n_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device) -> Store:
        raise NotImplementedError
