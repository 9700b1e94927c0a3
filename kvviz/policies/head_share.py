"""Head sharing: what MQA/GQA would do to this model, by mean-pooling its KV heads."""

from dataclasses import dataclass

import torch

from kvviz.i18n import N_, _
from kvviz.policies.params import PolicyError, param
from kvviz.policies.store import LayerError, Storage, Store
from kvviz.storage.quantize import ErrorMeter


class HeadShareStore(Store):
    """Holds (groups, n, head_dim) pooled keys and values; attention reads them repeated back
    to (kv_heads, n, head_dim)."""

    def __init__(self, kv_heads, head_dim, dtype, device, groups: int):
        super().__init__(groups, head_dim, dtype, device)  # self.keys/values: (groups, n, head_dim)
        self.model_kv_heads, self.groups = kv_heads, groups
        self.per_group = kv_heads // groups
        self.key_error, self.value_error = ErrorMeter(device), ErrorMeter(device)

    def pool(self, x: torch.Tensor, meter: ErrorMeter) -> torch.Tensor:
        pooled = x.unflatten(0, (self.groups, self.per_group)).mean(dim=1)  # (groups, q, head_dim)
        meter.add(x, self.expand(pooled).float())
        return pooled

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.per_group, dim=0)  # (kv_heads, n, head_dim)

    def append(self, keys, values):
        super().append(self.pool(keys, self.key_error), self.pool(values, self.value_error))

    def materialize(self):
        return self.expand(self.keys), self.expand(self.values)

    def keep(self, keep, keys=None, values=None):
        raise PolicyError(_(
            "head_share holds one set of entries per pooled head group, so it cannot follow a selector that"
            " evicts per KV head; run head_share on its own (or with full).")
        )

    def error(self) -> LayerError:
        """Relative Frobenius distance of every appended key and value from its group's mean."""
        return LayerError(key=self.key_error.value(), value=self.value_error.value())


@dataclass
class HeadShare(Storage):
    name = "head_share"
    family = N_("head sharing")
    paper = "Ainslie et al., 2023. GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints"
    paper_url = "https://arxiv.org/abs/2305.13245"
    summary = N_("""Shows what multi-query or grouped-query attention would do to this model: its
    KV heads are mean-pooled into `groups` groups of consecutive heads (groups = 1 is MQA), the
    GQA paper's conversion of a checkpoint. kvviz pools the projected keys and values, which
    equals pooling the k_proj/v_proj weights because RoPE is linear and the same for every head.
    The cache stores only the pooled heads, and attention reads each pooled head in place of
    every head of its group. The paper then uptrains the converted model (about 5% of
    pre-training); kvviz does not, so this shows the conversion's damage before uptraining.
    Cannot be combined with per-head eviction.""")

    groups: int = param(1, N_("KV head groups after pooling (1 = multi-query); must divide the model's KV heads."), min=1, max=1024)

    def make_store(self, layer_idx, n_layers, kv_heads, head_dim, dtype, device) -> Store:
        if kv_heads % self.groups:
            raise PolicyError(_("head_share: groups {groups} does not divide the model's {kv_heads} KV heads.").format(
                groups=self.groups, kv_heads=kv_heads))
        return HeadShareStore(kv_heads, head_dim, dtype, device, self.groups)
