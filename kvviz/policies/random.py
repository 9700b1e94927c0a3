"""Random eviction: the baseline every scored policy has to beat."""

from dataclasses import dataclass

from kvviz.i18n import N_
from kvviz.policies.selector import ScoredSelector
from kvviz.policies.scoring import random_draw


@dataclass
class Random(ScoredSelector):
    name = "random"
    family = N_("baseline")
    paper = "The baseline of eviction studies, e.g. Zhang et al., 2023 (H2O) and Li et al., 2024 (SnapKV)"
    paper_url = "https://arxiv.org/abs/2306.14048"
    summary = N_("""Once the budget is full, keeps a uniformly random subset of the entries, drawn
    independently for every layer and KV head, at prefill and at every decode step. The draws
    come from the run's seeded generator, so a run is reproducible (on a GPU also when its
    decode steps replay from a CUDA graph: the generator is registered with the graph). Uses no
    scores, so no GQA aggregation; any scored policy should do better than this.""")
    graph_safe = True

    def score(self, layer, ctx):
        return random_draw(layer.positions.shape, ctx.generator, layer.keys.device)  # (kv_heads, n)
