"""MiniCache: cross-layer merging of adjacent layers' keys and values in the deep half of the model."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch

from kvviz.i18n import N_, _
from kvviz.policies.params import PolicyError, param
from kvviz.policies.store import LayerError, Storage, Store
from kvviz.storage.fixed_capacity import FixedRows
from kvviz.storage.quantize import ErrorMeter


def slerp_merge(a: torch.Tensor, b: torch.Tensor, t: float, gamma: float):
    """MiniCache's merge of two layers' states of the same tokens. a, b: (kv_heads, n, d), a the
    shallower layer. Returns (direction (kv_heads, n, d) float32 unit vectors: SLERP(a/|a|, b/|b|; t),
    norms of a and b (kv_heads, n) float32, retained (kv_heads, n) bool: the tokens whose angular
    distance arccos(cos)/pi lies in the top ``gamma`` of their head's range [d_min, d_max])."""
    a, b = a.float(), b.float()
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    ua, ub = a / na.clamp_min(1e-12)[..., None], b / nb.clamp_min(1e-12)[..., None]
    omega = (ua * ub).sum(-1).clamp(-1.0, 1.0).acos()  # (kv_heads, n)
    sin = omega.sin()
    near = sin < 1e-6  # (almost) parallel: SLERP's limit is the linear interpolation
    safe = torch.where(near, torch.ones_like(sin), sin)
    wa = torch.where(near, torch.full_like(sin, 1 - t), ((1 - t) * omega).sin() / safe)
    wb = torch.where(near, torch.full_like(sin, t), (t * omega).sin() / safe)
    direction = wa[..., None] * ua + wb[..., None] * ub
    d = omega / math.pi
    d_min, d_max = d.amin(dim=-1, keepdim=True), d.amax(dim=-1, keepdim=True)
    retained = d > d_max - gamma * (d_max - d_min)
    return direction, na, nb, retained


class MergedPair:
    """The prompt's keys (or values) of two adjacent layers, held merged: one direction per token
    and KV head, each layer's norms, and, for the retained tokens, each layer's original vector."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, t: float, gamma: float, dtype):
        self.kv_heads, self.n, self.head_dim = a.shape
        direction, na, nb, retained = slerp_merge(a, b, t, gamma)
        self.direction = direction.to(dtype)  # (kv_heads, n, d): shared by both layers
        self.norms = (na.to(dtype), nb.to(dtype))  # (kv_heads, n) each
        self.retained = retained.flatten().nonzero().squeeze(-1).to(torch.int32)  # (R,) into kv_heads * n
        idx = self.retained.long()
        self.originals = (a.flatten(0, 1)[idx], b.flatten(0, 1)[idx])  # (R, d) each, in the compute dtype

    def restore(self, which: int) -> torch.Tensor:
        """Layer ``which`` (0: shallower, 1: deeper) as attention reads it, (kv_heads, n, d)."""
        x = (self.direction * self.norms[which][..., None]).flatten(0, 1)
        x[self.retained.long()] = self.originals[which]
        return x.view(self.kv_heads, self.n, self.head_dim)

    def tensors(self, which: int) -> list[torch.Tensor]:
        """What layer ``which`` holds; the shared direction and the retained indices are counted in the shallower layer."""
        own = [self.norms[which], self.originals[which]]
        return own + ([self.direction, self.retained] if which == 0 else [])


class PairLink:
    """What the two stores of a pair share: the shallower one's prompt, until the deeper one merges it."""

    def __init__(self):
        # a weak reference: no cycle store -> link -> store (a graph capture walks a store's state)
        self.first: weakref.ref[MiniCacheStore] | None = None
        self.keys: MergedPair | None = None
        self.values: MergedPair | None = None


class MiniCacheStore(Store):
    """One layer's cache: the prompt merged with its pair's (``link``; None for a layer left whole),
    then the generated tokens in full precision (``keys``/``values``, the tail), as in the authors'
    code, which merges at prefill and appends decode tokens unmerged."""

    full_precision_prefill = True  # the prompt's own attention reads its originals; the merge comes after

    def __init__(self, kv_heads, head_dim, dtype, device, link: PairLink | None, which: int, t: float, gamma: float):
        super().__init__(kv_heads, head_dim, dtype, device)
        self.link, self.which, self.t, self.gamma = link, which, t, gamma
        self.merged = 0  # prompt tokens held merged
        self.key_error, self.value_error = ErrorMeter(device), ErrorMeter(device)
        if link is not None and which == 0:
            link.first = weakref.ref(self)

    def append(self, keys, values):
        if self.link is None or len(self) or self.merged:
            return super().append(keys, values)
        if self.which == 0:  # waits, whole, for the deeper layer's prompt
            return super().append(keys, values)
        first = self.link.first() if self.link.first is not None else None
        if first is None or first.merged or len(first) != keys.shape[1]:
            raise PolicyError("minicache: a pair's deeper layer saw a prompt its shallower layer did not hold.")
        ka, va = first.keys.to(keys.device), first.values.to(values.device)
        self.link.keys = MergedPair(ka, keys, self.t, self.gamma, self.dtype)
        self.link.values = MergedPair(va, values, self.t, self.gamma, self.dtype)
        for store, (k, v) in ((first, (ka, va)), (self, (keys, values))):
            store.merged = k.shape[1]
            store.keys, store.values = k[:, :0], v[:, :0]  # the tail starts empty
            store.key_error.add(k, self.link.keys.restore(store.which).float())
            store.value_error.add(v, self.link.values.restore(store.which).float())

    def pair(self) -> tuple[MergedPair, MergedPair]:
        """The merged keys and values of this layer's pair (once the prompt is merged)."""
        if self.link is None or self.link.keys is None or self.link.values is None:
            raise RuntimeError("minicache: this layer's pair is not merged")
        return self.link.keys, self.link.values

    def prompt(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.merged:
            return None
        keys, values = self.pair()
        k, v = keys.restore(self.which), values.restore(self.which)
        return k.to(self.keys.device), v.to(self.values.device)

    def materialize(self):
        merged = self.prompt()
        if merged is None:
            return self.keys, self.values
        return torch.cat([merged[0], self.keys], dim=1), torch.cat([merged[1], self.values], dim=1)

    def __len__(self) -> int:
        return self.merged + self.keys.shape[1]

    def keep(self, keep, keys=None, values=None):
        if self.link is not None:
            raise PolicyError(_(
                "minicache holds a merged pair of layers per prompt token, so it cannot follow a selector that"
                " evicts per layer; run minicache on its own (or with full)."))
        super().keep(keep, keys, values)

    def tensors(self):
        own = [self.keys, self.values]
        if self.merged:
            keys, values = self.pair()
            own += keys.tensors(self.which) + values.tensors(self.which)
        return own

    def row_paths(self):
        """The tail grows by a row per token; the merged prompt does not (``hold_fixed``)."""
        return [("keys",), ("values",)]

    def hold_fixed(self, capacity, n, length):
        """The tail in buffers of the capacity left after the merged prompt (CUDA-graph decoding)."""
        return MergedPrefix(self, self.row_paths(), capacity - self.merged, n - self.merged)

    def retained(self) -> tuple[int, int]:
        """Prompt tokens x KV heads held unmerged (retained) in this layer's pair: keys, values."""
        if not self.merged:
            return 0, 0
        keys, values = self.pair()
        return keys.retained.numel(), values.retained.numel()

    def error(self) -> LayerError:
        """Relative Frobenius error of the prompt's keys and values as restored from the merge (0 for a layer left whole)."""
        return LayerError(key=self.key_error.value(), value=self.value_error.value())


class MergedPrefix(FixedRows):
    """A fixed-capacity tail after a merged prompt: the layer's slot i is the tail's row i - merged."""

    def append(self, keys, values, index):
        super().append(keys, values, index - self.store.merged)

    def nbytes(self, n: int) -> int:
        return super().nbytes(n - self.store.merged)


@dataclass
class MiniCache(Storage):
    name = "minicache"
    family = N_("cross-layer merging")
    paper = "Liu et al., 2024. MiniCache: KV Cache Compression in Depth Dimension for Large Language Models"
    paper_url = "https://arxiv.org/abs/2405.14366"
    summary = N_("""Merges the prompt's keys and values of adjacent layers in the deep part of the
    model (layers from `start` x the depth on, in pairs (l, l+1); a last odd layer stays whole).
    Per token and KV head, each layer's vector is split into its norm and its direction; the pair
    stores one direction, the SLERP of the two directions at `t` (toward the deeper layer), and
    both norms; attention reads direction x the layer's own norm. Tokens whose two directions
    are far apart (angular distance arccos(cos)/pi in the top `gamma` of their head's range, for
    keys and values separately) are retained: both layers' originals are kept and restored. The
    bytes counted are what is held: the shared direction, the retained tokens' indices (int32)
    and originals in the pair's first layer, each layer's norms and its own retained originals.
    The prompt's own attention reads the originals (the merge follows the prefill, as in the
    authors' code); generated tokens are appended unmerged. Cannot follow per-layer eviction.""")

    t: float = param(0.6, N_("SLERP interpolation toward the deeper layer's direction (the paper's default 0.6)."), min=0.0, max=1.0)
    gamma: float = param(0.05, N_("Retention threshold: tokens in the top gamma of their head's angular-distance range stay unmerged."), min=0.0, max=1.0)
    start: float = param(0.5, N_("Where merging starts, as a fraction of the depth (0.5: the deep half)."), min=0.0, max=1.0)

    def pairs(self, n_layers: int) -> dict[int, tuple[int, int]]:
        """layer -> (pair's first layer, 0 or 1 for shallower or deeper), for the merged layers."""
        first = math.ceil(self.start * n_layers)
        out = {}
        for a in range(first, n_layers - 1, 2):
            out[a], out[a + 1] = (a, 0), (a, 1)
        return out

    def make_store(self, layer_idx, n_layers, kv_heads, head_dim, dtype, device) -> Store:
        pair = self.pairs(n_layers).get(layer_idx)
        if pair is None:
            return MiniCacheStore(kv_heads, head_dim, dtype, device, None, 0, self.t, self.gamma)
        # the first layer's store makes the link, the second finds it; a link lives as long as its stores
        links = self.__dict__.setdefault("_links", weakref.WeakValueDictionary())
        link = PairLink() if pair[1] == 0 else links.get(pair[0])
        if pair[1] == 0:
            links[pair[0]] = link
        if link is None or (pair[1] == 1 and link.first is None):
            raise PolicyError(f"minicache: layer {layer_idx} was built before its pair's first layer {pair[0]}.")
        return MiniCacheStore(kv_heads, head_dim, dtype, device, link, pair[1], self.t, self.gamma)
