"""A Longformer/BigBird sparse pattern as a cache: global tokens, random blocks, a local window."""

from dataclasses import dataclass

import torch

from kvviz.i18n import N_, _
from kvviz.policies.params import PolicyError, param
from kvviz.policies.selector import ScoredSelector
from kvviz.policies.scoring import first_mask, random_draw, recent_mask
from kvviz.record.trace import Protection

GLOBAL, RANDOM_BLOCK, LOCAL = 3.0, 2.0, 1.0  # scores recorded in the trace: which part keeps an entry


@dataclass
class SparsePattern(ScoredSelector):
    name = "sparse_pattern"
    family = N_("sparse")
    paper = "Beltagy et al., 2020. Longformer; Zaheer et al., 2020. Big Bird: Transformers for Longer Sequences"
    paper_url = "https://arxiv.org/abs/2007.14062"
    graph_safe = True
    summary = N_("""The attention pattern of Longformer and BigBird turned into a cache: the
    `n_global` first tokens (global tokens), `random_blocks` blocks of `block_size` consecutive
    prompt tokens drawn at random per KV head at the end of prefill (BigBird's random
    attention), and a local window of the newest tokens, which takes the rest of the budget:
    budget = n_global + random_blocks x block_size + window. Blocks are aligned to block_size
    after the global tokens, drawn among the complete blocks before the window, from the run's
    seeded generator. In the papers each query block draws its own random blocks; a cache serves
    every later query, so kvviz draws once per KV head. Uses no scores (no GQA aggregation).
    The trace's score says which part holds an entry: 3 global, 2 random block, 1 local.""")

    n_global: int = param(4, N_("First tokens always kept (global tokens)."), min=0, max=1024)
    block_size: int = param(4, N_("Tokens per random block."), min=1, max=256)
    random_blocks: int = param(2, N_("Random blocks of prompt tokens kept per KV head."), min=0, max=256)

    protection_params = {"n_sink": "n_global"}  # the window is what the budget leaves
    others = N_("in its random blocks (random_blocks x block_size)")

    def check_budget(self, budget: int) -> None:
        if budget <= self.n_global + self.random_blocks * self.block_size:
            raise PolicyError(_("sparse_pattern: budget {budget} leaves no local window after {n_global} global tokens and"
                                " {random_blocks} random blocks of {block_size}; raise the budget or shrink the pattern.").format(
                budget=budget, n_global=self.n_global, random_blocks=self.random_blocks, block_size=self.block_size))

    def protection(self, budget):
        window = budget - self.n_global - self.random_blocks * self.block_size if budget else 0
        return Protection(n_sink=self.n_global, recent=window)

    def observe(self, layer, ctx):
        if ctx.budget is None or not ctx.is_prefill:
            return
        # draw the random blocks among the complete blocks between the globals and the window
        window = self.protection(ctx.budget).recent
        n_blocks = max(layer.n - window - self.n_global, 0) // self.block_size
        block = (layer.positions - self.n_global).div(self.block_size, rounding_mode="floor")  # (kv_heads, n)
        draw = random_draw((layer.kv_heads, n_blocks), ctx.generator, layer.keys.device)
        chosen = draw.topk(min(self.random_blocks, n_blocks), dim=-1).indices  # (kv_heads, r)
        in_range = (layer.positions >= self.n_global) & (block < n_blocks)
        pinned = (block.clamp(0, max(n_blocks - 1, 0)).unsqueeze(-1) == chosen.unsqueeze(1)).any(-1) & in_range
        layer.stats["random_block"] = pinned.float()  # persists, gathered on eviction

    def score(self, layer, ctx):
        """Which part holds an entry (the globals and the window are also protected)."""
        window = self.protection(ctx.budget).recent
        part = torch.where(recent_mask(layer.positions, window), LOCAL, 0.0)
        part = torch.where(layer.stats["random_block"] > 0, RANDOM_BLOCK, part)
        return torch.where(first_mask(layer.positions, self.n_global), GLOBAL, part)  # (kv_heads, n)
