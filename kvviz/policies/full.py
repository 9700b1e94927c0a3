"""The full cache: the baseline every other policy is measured against."""

from dataclasses import dataclass

from kvviz.i18n import N_
from kvviz.policies.selector import Selector


@dataclass
class Full(Selector):
    name = "full"
    family = N_("baseline")
    paper = "Vaswani et al., 2017. Attention Is All You Need"
    paper_url = "https://arxiv.org/abs/1706.03762"
    summary = N_("""Keeps every key and value. Token for token identical to transformers' greedy
    generate; its memory grows by one entry per layer and KV head with every token.""")
    acts_at_decode = False  # decides nothing, at prefill or after

    def step(self, layer, ctx):
        return None
