"""PyramidKV: SnapKV selection with budgets that shrink with depth.

The budget schedule is the authors' ``PyramidKVCluster`` (Zefan-Cai/KVCache-Factory, commit
c97f9d7, pyramidkv/pyramidkv_utils.py, lines 360-375, and its KV-head path at lines 449-469): only the part of the budget
outside the observation window is shaped into a pyramid, and every layer keeps the whole window
on top of its share.
"""

from dataclasses import dataclass

from kvviz.i18n import N_
from kvviz.policies.params import param
from kvviz.policies.snapkv import SnapKV


@dataclass
class PyramidKV(SnapKV):
    name = "pyramidkv"
    family = N_("eviction")
    paper_url = "https://arxiv.org/abs/2406.02069"
    paper = "Cai et al., 2024. PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling"
    summary = N_("""Lower layers spread their attention widely, higher layers focus on a few tokens,
    so PyramidKV gives lower layers more of the cache. As in the authors' code (KVCache-Factory's
    PyramidKVCluster), `budget` is the average kept per layer and KV head, observation window
    included; the room outside the window (budget - window) is shaped into a pyramid: the last
    layer selects (budget - window) // `beta` entries, the first 2 x (budget - window) minus
    that, and the layers between fall by an equal whole step ((first - last) // (layers - 1),
    so the total can come out a little above layers x budget). Every layer keeps the whole
    window on top of its selection. When the first layer's share would exceed the prompt before
    the window, it is cut to that and the last layer's raised to keep the sum; a prompt shorter
    than 2 x (budget - window) gets the same budget in every layer (SnapKV). Each layer then
    selects like SnapKV (window votes, pooled before the window, top-k per KV head; mean over
    the group's query heads for GQA). Differs from the released code on purpose: a budget at or
    below `window` keeps the newest `budget` tokens in every layer (the released code refuses
    it).""")

    beta: float = param(20.0, N_("The last layer selects (budget - window) // beta entries besides the window; larger = steeper pyramid."), min=1.0, max=1000.0)

    def layer_budget(self, budget, layer_idx, n_layers, prompt_len=None):
        """Entries kept per KV head in ``layer_idx``: the released schedule (line numbers above);
        ``prompt_len`` None = a prompt long enough for the whole pyramid."""
        if budget is None or n_layers <= 1:
            return budget
        window = min(self.window, budget)
        room = budget - window  # max_capacity_prompt - window_size
        if room <= 0 or (prompt_len is not None and prompt_len < 2 * room):
            return budget  # the released code's middle branch: SnapKV's budget in every layer
        least = int(room // self.beta)  # min_num
        most = 2 * room - least  # max_num
        if prompt_len is not None and most >= prompt_len - window:
            most = prompt_len - window
            least = 2 * room - most
        step = (most - least) // (n_layers - 1)
        return most - layer_idx * step + window
