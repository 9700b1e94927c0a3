"""ChunkKV: keep whole chunks of tokens, ranked by the summed scores of another scorer.

Follows ``ChunkKVPress`` of NVIDIA/kvpress (commit 19a6374, kvpress/presses/chunkkv_press.py,
``compress``, lines 47-115).
"""

from dataclasses import dataclass, field

import torch

from kvviz.i18n import N_, _
from kvviz.policies.params import PolicyError, param
from kvviz.policies.selector import ScoredSelector, Selection
from kvviz.policies.scoring import keep_top


def inner_scorer(owner: str, name: str) -> ScoredSelector:
    """The registered scored selector ``name``, with its default parameters, as an inner scorer."""
    from kvviz.policies import get

    cls = get(name)
    if not issubclass(cls, ScoredSelector) or getattr(cls, "wraps_scorer", False):
        raise PolicyError(_("{owner}: scorer must be a scored selector (e.g. snapkv, knorm, h2o), not '{name}'.").format(owner=owner, name=name))
    return cls()


def folded_scores(inner: ScoredSelector, layer, ctx) -> torch.Tensor:
    """(kv_heads, n) the inner scorer's scores with its protected entries raised to the layer's
    highest score, as kvpress's scorers pad their sinks and windows."""
    inner.observe(layer, ctx)
    scores = inner.score(layer, ctx).float()
    return scores.masked_fill(inner.protected(layer.positions, ctx.budget), float(scores.max()))


@dataclass
class ChunkKV(ScoredSelector):
    name = "chunkkv"
    family = N_("eviction")
    paper = "Liu et al., 2025. ChunkKV: Semantic-Preserving KV Cache Compression for Efficient Long-Context LLM Inference"
    paper_url = "https://arxiv.org/abs/2502.00299"
    summary = N_("""At the end of prefill, another registered scorer (`scorer`, with its default
    parameters) scores every entry; its protected entries (sinks, windows) count with the
    layer's highest score, as kvpress's scorers pad them. The scores are summed over the KV
    heads and averaged per chunk of `chunk_length` tokens (the last, shorter chunk its own), and
    the best chunks are kept whole, the same ones in every KV head. As kvpress's ChunkKVPress,
    which keeps int(chunks × (1 - compression ratio)) chunks; kvviz puts budget/prompt length
    for 1 - ratio, so a layer holds at most its budget, often less (whole chunks only: at ratio
    0.25 of 177 tokens, 2 chunks: 37 entries for a budget of 44). A prompt shorter than one chunk
    is cut to the inner scorer's own top entries per KV head, as the press does; kvviz does so
    too when the budget is smaller than one chunk (the press would keep one whole chunk, more
    than the budget). Generated tokens are never evicted.""")
    needs_queries = True  # the inner scorer may need them
    acts_at_decode = False
    wraps_scorer = True

    scorer: str = param("snapkv", N_("The registered scored selector whose scores rank the chunks (its defaults)."), type=str)
    chunk_length: int = param(20, N_("Tokens per chunk."), min=1, max=4096)
    inner: ScoredSelector | None = field(default=None, repr=False, compare=False)

    def validate(self) -> None:
        super().validate()
        self.inner = inner_scorer(self.name, self.scorer)

    def step(self, layer, ctx):
        if not ctx.is_prefill or ctx.budget is None or layer.n <= ctx.budget:
            return None
        if self.inner is None:
            self.validate()
        assert self.inner is not None  # validate() sets it
        scores = folded_scores(self.inner, layer, ctx)  # (kv_heads, n)
        n, c = layer.n, self.chunk_length
        full, rest = divmod(n, c)
        if full == 0 or ctx.budget < c:  # no whole chunk (fits): the inner scorer's top-k, as the press delegates
            return Selection(keep=keep_top(scores, ctx.budget), scores=scores)
        summed = scores.sum(dim=0)  # (n,)
        chunk_scores = summed[: full * c].view(full, c).mean(dim=-1)
        if rest:
            chunk_scores = torch.cat([chunk_scores, summed[full * c :].mean(dim=-1, keepdim=True)])
        n_chunks = max(1, (len(chunk_scores) * ctx.budget) // n)
        chunk_of = torch.arange(n, device=scores.device) // c  # (n,)
        kept = torch.isin(chunk_of, chunk_scores.topk(n_chunks).indices)
        keep = kept.nonzero().flatten()[None].expand(layer.kv_heads, -1)  # (kv_heads, k)
        return Selection(keep=keep.contiguous(), scores=chunk_scores[chunk_of][None].expand(layer.kv_heads, -1))
