"""KeyDiff: keep the keys least like the layer's mean key direction.

Follows kvpress's ``KeyDiffPress.score`` (NVIDIA/kvpress, commit 08a43bf,
kvpress/presses/keydiff_press.py, lines 32-33): the anchor is the mean of the L2-normalised
keys of a KV head, and an entry's score is minus the cosine similarity of its key to that anchor.
"""

from dataclasses import dataclass

import torch.nn.functional as F

from kvviz.i18n import N_
from kvviz.policies.selector import ScoredSelector


@dataclass
class KeyDiff(ScoredSelector):
    name = "keydiff"
    family = N_("eviction")
    paper = "Park et al., 2025. KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM Inference in Resource-Constrained Environments"
    paper_url = "https://arxiv.org/abs/2504.15364"
    summary = N_("""Keys that point the way most keys point carry little that the others do not, so
    each KV head keeps its most distinctive keys: the anchor is the mean of the head's keys
    scaled to unit length, and an entry's score is minus the cosine similarity of its key
    (RoPE applied, as cached) to the anchor. Needs no attention, so it works with fused attention
    kernels. As kvpress's KeyDiffPress, kvviz compresses the prompt once, after prefill, with no
    protected tokens; generated tokens are never evicted. The paper also evicts block by block
    while a long prompt is read and during decoding; kvviz does not.""")
    acts_at_decode = False
    others = N_("whose keys are least like the mean key direction")

    def score(self, layer, ctx):
        keys = layer.keys.float()  # (kv_heads, n, d)
        anchor = F.normalize(keys, p=2, dim=-1).mean(dim=1, keepdim=True)  # (kv_heads, 1, d)
        return -F.cosine_similarity(keys, anchor, dim=-1)  # (kv_heads, n)
