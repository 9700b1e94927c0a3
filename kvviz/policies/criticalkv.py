"""CriticalKV: refine another scorer by how much each entry's value moves the attention's output.

Follows ``CriticalKVPress`` and ``CriticalAdaKVPress`` of NVIDIA/kvpress (commit 8bb29b9,
kvpress/presses/criticalkv_press.py: ``vwl1norm`` lines 58-76, ``CriticalKVPress.score`` lines
78-92, ``CriticalAdaKVPress.compress`` lines 137-192).
"""

from dataclasses import dataclass, field

import torch

from kvviz.i18n import N_, _
from kvviz.policies.adakv import adaptive_budgets
from kvviz.policies.chunkkv import folded_scores, inner_scorer
from kvviz.policies.params import PolicyError, param
from kvviz.policies.selector import ScoredSelector, Selection
from kvviz.policies.scoring import keep_top

TOP = torch.finfo(torch.float32).max


def output_projections(model) -> list[torch.Tensor | None]:
    """Per decoder layer the attention's output projection weight (hidden, q_heads * head_dim),
    or None where the layer has none under a known name."""
    from kvviz.model.attention_inputs import decoder_attention

    out = []
    for module in decoder_attention(model):
        proj = next((getattr(module, n) for n in ("o_proj", "dense", "out_proj") if hasattr(module, n)), None)
        out.append(None if proj is None else proj.weight)
    return out


def projected_value_norms(values: torch.Tensor, w_o: torch.Tensor | None) -> torch.Tensor:
    """values (kv_heads, n, d), w_o (hidden, q_heads * d) -> (kv_heads, n): the L1 norm of each
    value through each query head's slice of W_o, averaged over a KV head's query heads. Without
    W_o, the value's own L1 norm (W_o taken as the identity)."""
    kv_heads, n, d = values.shape
    if w_o is None:
        return values.float().abs().sum(dim=-1)
    per_head = w_o.to(values.device, torch.float32).T.reshape(-1, d, w_o.shape[0])  # (q_heads, d, hidden)
    group = per_head.shape[0] // kv_heads
    norms = torch.stack([
        (values[h // group].float() @ per_head[h]).abs().sum(dim=-1) for h in range(per_head.shape[0])
    ])  # (q_heads, n): one head at a time, as the press, so no (q_heads, n, hidden) tensor is held
    return norms.view(kv_heads, group, n).mean(dim=1)


def raise_top(scores: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """scores (kv_heads, n) with each head's top ``counts[h]`` raised to the float maximum."""
    out = scores.clone()
    if not max(counts):
        return out
    top = scores.topk(max(counts), dim=-1).indices
    for h, c in enumerate(counts):
        if c:
            out[h, top[h, :c]] = TOP
    return out


@dataclass
class CriticalKV(ScoredSelector):
    name = "criticalkv"
    family = N_("eviction")
    paper = "Feng et al., 2025. Identify Critical KV Cache in LLM Inference from an Output Perturbation Perspective"
    paper_url = "https://arxiv.org/abs/2502.03805"
    summary = N_("""Two stages over another registered scorer (`scorer`, with its default
    parameters; its protected entries count with the layer's highest score, as kvpress's scorers
    pad them). At the end of prefill, stage 1 keeps each KV head's top `first_stage_ratio` ×
    budget entries by the inner scores; stage 2 ranks the others by (inner score + `epsilon`) ×
    the L1 norm of the value through the attention's output projection W_o (per query head, then
    averaged over a KV head's query heads): an entry whose value barely changes the output goes
    first. As kvpress's CriticalKVPress (the budget is kvviz's budget). With `adaptive`, the
    layer's budget is spread over its heads first, as kvpress's CriticalAdaKVPress (AdaKV's
    allocation with `alpha_safeguard`, then both stages per head on each head's budget); kvviz's
    tensors are rectangular, so every head then holds the largest head budget, topped up with
    its next-best entries (as `adakv`; the head budgets of the last run are in `head_budgets`).
    W_o is read from the run's model; a cache built without the engine (tests of mechanics, the
    paged engine) has no model, and takes the value's own L1 norm. kvpress warns to turn off
    expected_attention's own value norm inside it; kvviz uses the inner scorer's defaults.
    Generated tokens are never evicted.""")
    needs_queries = True  # the inner scorer may need them
    acts_at_decode = False
    wraps_scorer = True
    others = N_("by inner score × projected value norm")

    scorer: str = param("snapkv", N_("The registered scored selector refined by the projected value norms (its defaults)."), type=str)
    first_stage_ratio: float = param(0.5, N_("Share of the budget chosen by the inner scores alone (stage 1)."), min=0.0, max=1.0)
    epsilon: float = param(1e-4, N_("Added to the inner score before it is multiplied by the projected value norm."), min=0.0, max=1.0)
    adaptive: bool = param(False, N_("Head-wise budgets first, as CriticalAdaKVPress."))
    alpha_safeguard: float = param(0.2, N_("With adaptive: share of the budget every KV head is guaranteed."), min=0.0, max=1.0)
    inner: ScoredSelector | None = field(default=None, repr=False, compare=False)
    w_o: list = field(default_factory=list, repr=False, compare=False)
    head_budgets: dict = field(default_factory=dict, repr=False, compare=False)

    def validate(self) -> None:
        super().validate()
        self.inner = inner_scorer(self.name, self.scorer)

    def prepare(self, model, tokenizer, prompt_ids):
        self.w_o = output_projections(model)

    def step(self, layer, ctx):
        if not ctx.is_prefill or ctx.budget is None or layer.n <= ctx.budget:
            return None
        if self.inner is None:
            self.validate()
        assert self.inner is not None  # validate() builds it
        scores = folded_scores(self.inner, layer, ctx)  # (kv_heads, n)
        w_o = self.w_o[layer.layer_idx] if layer.layer_idx < len(self.w_o) else None
        if w_o is not None and w_o.shape[1] % layer.values.shape[-1]:
            raise PolicyError(_("criticalkv: the output projection does not split into heads of the values' size."))
        norms = projected_value_norms(layer.values, w_o)  # (kv_heads, n)
        refined = (scores + self.epsilon) * norms  # stage 2's scores, for the trace
        if not self.adaptive:
            first = int(ctx.budget * self.first_stage_ratio)
            # stage 1: the inner scores' top entries, above every stage-2 score
            final = refined.scatter(1, scores.topk(first, dim=-1).indices, TOP) if first else refined
            return Selection(keep=keep_top(final, ctx.budget), scores=refined)
        ranked, counts = adaptive_budgets(scores, ctx.budget, self.alpha_safeguard)  # safeguarded, as the press
        budgets = counts.tolist()
        self.head_budgets[layer.layer_idx] = budgets
        stage1 = raise_top(ranked, [int(c * self.first_stage_ratio) for c in budgets])
        final = raise_top((stage1 + self.epsilon) * norms, budgets)  # (TOP + eps) x norm may be inf: still on top
        # rectangular tensors: every head holds the largest head budget, its own set first
        return Selection(keep=keep_top(final, max(budgets)), scores=refined)
