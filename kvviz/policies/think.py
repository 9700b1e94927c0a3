"""ThinK: prune key channels, not tokens. Per layer and KV head the channels with the smallest
query-norm x key-norm score (the prompt's last window of queries) are dropped from the stored keys."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from kvviz.i18n import N_
from kvviz.policies.params import param
from kvviz.policies.store import LayerError, Storage, Store
from kvviz.storage.quantize import ErrorMeter


def channel_scores(queries: torch.Tensor, keys: torch.Tensor, window: int) -> torch.Tensor:
    """queries (q_heads, q, head_dim) RoPE applied, keys (kv_heads, n, head_dim) -> (kv_heads, head_dim):
    mean over the last ``window`` queries of q², averaged over the query heads of each KV head,
    times the mean over the keys of k²."""
    kv_heads, _, head_dim = keys.shape
    q = queries[:, -window:].float()
    q_norm = q.square().mean(dim=1).view(kv_heads, -1, head_dim).mean(dim=1)  # (kv_heads, head_dim)
    return q_norm * keys.float().square().mean(dim=1)


class ChannelStore(Store):
    """Keys (kv_heads, n, head_dim - pruned) on the kept channels ``channels`` (kv_heads, kept), fixed
    at prefill; values as they are. Attention reads keys with zeros in the pruned channels."""

    full_precision_prefill = True  # the prompt's attention reads every channel (kvpress prunes after it)
    needs_prefill_queries: ClassVar[bool] = True

    def __init__(self, kv_heads, head_dim, dtype, device, pruned: int, window: int):
        super().__init__(kv_heads, head_dim, dtype, device)
        self.pruned, self.window = pruned, window
        self.channels: torch.Tensor | None = None  # (kv_heads, head_dim - pruned) long, ascending
        self.queries: torch.Tensor | None = None  # the prefill's queries, until the first append
        self.keys = torch.empty(kv_heads, 0, head_dim - pruned, dtype=dtype, device=device)
        self.key_error = ErrorMeter(device)

    def observe_queries(self, queries: torch.Tensor) -> None:
        """The prefill's queries (q_heads, q, head_dim), RoPE applied, before its keys are appended."""
        self.queries = queries

    def append(self, keys, values):
        if self.channels is None:
            if self.queries is None:
                raise ValueError("think scores key channels with the prompt's queries, but none were captured.")
            scores = channel_scores(self.queries, keys, self.window)
            dropped = scores.topk(self.pruned, dim=-1, largest=False).indices  # (kv_heads, pruned)
            keep = torch.ones_like(scores, dtype=torch.bool).scatter_(-1, dropped, False)
            self.channels = keep.nonzero()[:, 1].view(self.kv_heads, -1)  # ascending per head
            self.queries = None
        idx = self.channels.unsqueeze(1).expand(-1, keys.shape[1], -1)
        kept = keys.gather(-1, idx)  # (kv_heads, q, kept)
        self.key_error.add(keys, self.widen(kept).float())
        self.keys = torch.cat([self.keys, kept], dim=1)
        self.values = torch.cat([self.values, values], dim=1)

    def kept_channels(self) -> torch.Tensor:
        """(kv_heads, head_dim - pruned) the channels kept, chosen by the first append; RuntimeError before it."""
        if self.channels is None:
            raise RuntimeError("think has chosen no channels before its first append")
        return self.channels

    def widen(self, kept: torch.Tensor) -> torch.Tensor:
        """(kv_heads, n, kept) -> (kv_heads, n, head_dim) with zeros in the pruned channels."""
        full = kept.new_zeros(self.kv_heads, kept.shape[1], self.head_dim)
        return full.scatter_(-1, self.kept_channels().unsqueeze(1).expand(-1, kept.shape[1], -1), kept)

    def materialize(self):
        if self.channels is None:
            return self.keys.new_empty(self.kv_heads, 0, self.head_dim), self.values
        return self.widen(self.keys), self.values

    def keep(self, keep, keys=None, values=None):
        """Gather kept rows; merged replacement keys (full width) lose the pruned channels again."""
        if keys is not None:
            self.keys = keys.gather(-1, self.kept_channels().unsqueeze(1).expand(-1, keys.shape[1], -1))
        else:
            self.keys = self.keys.gather(1, keep.unsqueeze(-1).expand(-1, -1, self.keys.shape[-1]))
        idx = keep.unsqueeze(-1).expand(-1, -1, self.head_dim)
        self.values = values if values is not None else self.values.gather(1, idx)

    def tensors(self):
        return [self.keys, self.values] + ([self.channels] if self.channels is not None else [])

    def error(self) -> LayerError:
        """Relative Frobenius error of the keys (zeros in the pruned channels); values are exact."""
        return LayerError(key=self.key_error.value(), value=0.0)


@dataclass
class ThinK(Storage):
    name = "think"
    family = N_("channel pruning")
    needs_prefill_queries = True
    paper = "Xu et al., 2024. ThinK: Thinner Key Cache by Query-Driven Pruning"
    paper_url = "https://arxiv.org/abs/2407.21018"
    summary = N_("""Drops key channels instead of tokens, as kvpress's ThinKPress: per layer and KV
    head, each channel is scored by the mean over the prompt's last `window` queries of q²
    (averaged over the query heads sharing the KV head) times the mean over the prompt's keys of
    k², and the int(head_dim x `channel_ratio`) lowest are pruned. The prompt's own attention
    reads every channel; from then on the cache holds the keys on the kept channels only (with
    the channel index), and attention reads them with zeros in the pruned ones. Values are not
    touched. Departures from kvpress: kvpress zeroes the pruned channels in a full-width tensor
    (no bytes saved) and keeps generated tokens' keys whole; kvviz really stores the narrower
    keys and prunes generated tokens' keys on the same channels (the channels are fixed at
    prefill). Composes with a token selector (`snapkv+think`).""")

    channel_ratio: float = param(0.5, N_("Fraction of key channels pruned per KV head (int(head_dim x ratio))."), min=0.0, max=0.95)
    window: int = param(32, N_("Last prompt queries that score the channels."), min=1, max=4096)

    def make_store(self, layer_idx, n_layers, kv_heads, head_dim, dtype, device) -> Store:
        return ChannelStore(kv_heads, head_dim, dtype, device, int(head_dim * self.channel_ratio), self.window)
