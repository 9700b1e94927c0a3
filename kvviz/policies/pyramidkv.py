"""PyramidKV: SnapKV selection with budgets that shrink with depth."""

from dataclasses import dataclass

from kvviz.policies.params import param
from kvviz.policies.snapkv import SnapKV


@dataclass
class PyramidKV(SnapKV):
    name = "pyramidkv"
    family = "eviction"
    paper = "Cai et al., 2024. PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling"
    summary = """Lower layers spread their attention widely, higher layers focus on a few tokens,
    so PyramidKV gives lower layers more of the cache: the budgets fall arithmetically from the
    first layer to the last, the last layer getting budget / `beta` and the first 2 x budget -
    budget / `beta`, so that the mean over layers is the given budget. Each layer then selects
    like SnapKV (observation window votes, pooled, top-k per KV head; mean over the group's
    query heads for GQA). Layer budgets are rounded so that they sum to layers x budget, and are
    at least 1; a layer whose share is larger than the prompt keeps the whole prompt."""

    beta: float = param(20.0, "The last layer keeps budget / beta; larger = steeper pyramid.", min=1.0, max=1000.0)

    def layer_budget(self, budget, layer_idx, n_layers):
        if budget is None or n_layers <= 1:
            return budget
        top = budget / self.beta  # the last layer
        bottom = 2 * budget - top  # the first layer

        def share(layer):  # budget of layers [0, layer), exact arithmetic series
            return layer * bottom - (bottom - top) * layer * (layer - 1) / (2 * (n_layers - 1))

        # rounding the running sum keeps the total at n_layers * budget
        return max(1, round(share(layer_idx + 1)) - round(share(layer_idx)))
