"""KNorm: keep the keys with the lowest L2 norm."""

from dataclasses import dataclass

from kvviz.i18n import N_, _
from kvviz.policies.params import PolicyError, param
from kvviz.policies.selector import ScoredSelector
from kvviz.record.trace import Protection


@dataclass
class KNorm(ScoredSelector):
    name = "knorm"
    family = N_("eviction")
    paper = "Devoto et al., 2024. A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression"
    paper_url = "https://arxiv.org/abs/2406.11430"
    graph_safe = True
    summary = N_("""Keys with a low L2 norm tend to receive high attention, so the norm is a score
    that needs no attention at all (it works with fused attention kernels). Each KV head keeps
    its `budget` keys of lowest norm, evicting at every step once the budget is full. The
    score is the key's own, per KV head, so no GQA aggregation is needed; RoPE is a rotation and
    does not change the norm. kvviz can also protect `n_sink` first and `recent` newest tokens
    (both 0 by default, as in the paper).""")

    n_sink: int = param(0, N_("First tokens always kept, part of the budget."), min=0, max=1024)
    recent: int = param(0, N_("Most recent tokens always kept, part of the budget."), min=0, max=4096)

    protection_params = {"n_sink": "n_sink", "recent": "recent"}
    others = N_("with the lowest key norms")

    def check_budget(self, budget: int) -> None:
        if self.n_sink + self.recent > budget:
            raise PolicyError(_("knorm: n_sink + recent ({protected}) exceed the budget {budget}.").format(
                protected=self.n_sink + self.recent, budget=budget))

    def score(self, layer, ctx):
        return -layer.keys.float().norm(dim=-1)  # (kv_heads, n): higher = lower norm

    def protection(self, budget):
        return Protection(n_sink=self.n_sink, recent=self.recent)
