"""DuoAttention: retrieval heads keep every entry, streaming heads keep the sinks and a recent window.

Follows ``DuoAttentionPress`` of NVIDIA/kvpress (commit 8bb29b9,
kvpress/presses/duo_attention_press.py): the heads scored as its on-the-fly mode does
(``duo_attention_on_the_fly``, lines 145-204), the lowest-scored share of all heads made streaming
(``post_init_from_model``, lines 72-87), and their entries between the sinks and the recent window
pruned (``compress``, lines 98-117).
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field

import torch

from kvviz.i18n import N_, _
from kvviz.policies.params import Note, PolicyError, param
from kvviz.policies.selector import ScoredSelector, Selection
from kvviz.policies.scoring import attention_probs, first_mask, recent_mask
from kvviz.record.trace import Protection

# run_details (saved in the trace, English); shown_run_details gives them in the session's language
STREAMING_HEADS = N_("Streaming heads")
STREAMING_COUNT = N_("{n} of {total} KV heads (S streaming, R retrieval, per layer: its KV heads) · {rows}")
_STREAMING_SAVED = re.compile(re.escape(STREAMING_COUNT).replace(r"\{n\}", r"(\d+)").replace(r"\{total\}", r"(\d+)")
                              .replace(r"\{rows\}", "(.*)"), re.DOTALL)


def shown_run_details(details: dict[str, str]) -> dict[str, str]:
    """A trace's saved ``policy_details`` in the session's language (other policies' rows as saved)."""
    out = {}
    for key, text in details.items():
        if key == STREAMING_HEADS:
            found = _STREAMING_SAVED.fullmatch(text)
            key, text = _(key), _(STREAMING_COUNT).format(n=found[1], total=found[2], rows=found[3]) if found else text
        out[key] = text
    return out


def attention_pass(model, prompt_ids: list[int], on_call) -> None:
    """One forward of ``prompt_ids`` through ``model`` with no cache; ``on_call(layer_idx, call)``
    hears every attention call (a kvviz ``AttentionCall``: its input, positions, RoPE) before the
    module runs. The hooks are removed whatever happens; only the last position's logits are made."""
    from kvviz.model.attention_inputs import AttentionCall, attention_modules
    from kvviz.model.devices import input_device

    def hook(i):
        return lambda module, args, kwargs: on_call(i, AttentionCall.read(module, args, kwargs))

    handles = [m.register_forward_pre_hook(hook(i), with_kwargs=True) for i, m in enumerate(attention_modules(model))]
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([prompt_ids], device=input_device(model)), use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()


def streaming_subject(text: str, subject: str) -> str:
    """A selector's note on what duo_attention keeps, said of its streaming heads (``subject``): in
    English "duo_attention keeps" becomes "<subject> keep"; in another language the policy's first
    name in the note becomes the subject."""
    if "duo_attention keeps" in text:
        return text.replace("duo_attention keeps", subject + " keep")
    return text.replace("duo_attention", subject, 1)


def rotary_embedding(model):
    """The model's shared rotary embedding module (``model.model.rotary_emb`` in most families)."""
    for path in ("model.rotary_emb", "model.language_model.rotary_emb", "gpt_neox.rotary_emb", "rotary_emb"):
        node = model
        for part in path.split("."):
            node = getattr(node, part, None)
        if node is not None:
            return node
    raise PolicyError(_("duo_attention: {model} has no shared rotary embedding to place the mean query and key.").format(
        model=type(model).__name__))


def head_score(call, rotary, q_len: int) -> torch.Tensor:
    """(kv_heads,) the on-the-fly score of each KV head of one layer: the mean query and the mean
    key of the prompt (before RoPE) repeated at positions 0 .. q_len - 1 and rotated there; the
    last query's attention over those keys, cumulated along the keys; the mean of that curve (the
    area under it: low when the attention sits on the newest keys, a streaming head), averaged
    over a KV head's query heads."""
    from kvviz.model.attention_inputs import projections, rope

    q, k = projections(call.module, call.hidden)  # (1, heads, n, d), before RoPE
    d = q.shape[-1]
    q, k = q.float().mean(dim=2, keepdim=True), k.float().mean(dim=2, keepdim=True)
    positions = torch.arange(q_len, device=q.device)[None]
    if "layer_type" in inspect.signature(rotary.forward).parameters:  # Gemma 3: one rotation per kind of layer
        cos, sin = rotary(call.hidden, positions, call.module.config.layer_types[call.module.layer_idx])
    else:
        cos, sin = rotary(call.hidden, positions)
    q = rope(call.module, q.expand(-1, -1, q_len, -1), cos.to(q.dtype), sin.to(q.dtype))[0, :, -1]  # (q_heads, d)
    k = rope(call.module, k.expand(-1, -1, q_len, -1), cos.to(k.dtype), sin.to(k.dtype))[0]  # (kv_heads, q_len, d)
    group = q.shape[0] // k.shape[0]
    weights = torch.einsum("hd,hnd->hn", q, k.repeat_interleave(group, dim=0)).div(math.sqrt(d)).softmax(dim=-1)
    return weights.cumsum(dim=-1).mean(dim=-1).view(k.shape[0], group).mean(dim=1)


@dataclass
class DuoAttention(ScoredSelector):
    name = "duo_attention"
    family = N_("eviction")
    paper = "Xiao et al., 2024. DuoAttention: Efficient Long-Context LLM Inference with Retrieval and Streaming Heads"
    paper_url = "https://arxiv.org/abs/2410.10819"
    summary = N_("""Two kinds of KV heads: retrieval heads keep every entry of the prompt, streaming
    heads keep the `n_sink` first tokens and the most recent ones (n_sink + recent = the budget).
    The heads are classified from the prompt itself, as kvpress's DuoAttentionPress does in its
    on-the-fly mode: before the prefill, one pass over the prompt takes each layer's mean query
    and mean key (before RoPE), repeats them at positions 0 .. `q_len` - 1 with RoPE, and scores
    each KV head by the area under the last query's cumulated attention (low: the attention sits
    on the newest keys); the `head_ratio` lowest-scored share of all the model's KV heads are
    streaming. kvpress scores 50 BookSum texts and fixes 128 sinks + 256 recent; kvviz scores the
    run's prompt and takes the budget. kvpress masks the pruned entries in attention; kvviz's
    tensors are rectangular, so a layer that has a retrieval head holds every entry in all its
    heads (its streaming heads' others stay held and read), and only a layer of streaming heads
    frees memory. Which heads are which is in the run's details (`streaming_heads`: layer -> one
    flag per KV head). A cache built without the engine (tests of mechanics, the paged engine)
    has no pass over the prompt: there the heads of each layer are ranked by the share of the last
    prompt query's attention outside the sinks and window, within the layer. Generated tokens are
    never evicted.""")
    needs_queries = True  # for the fallback without the engine's pass
    acts_at_decode = False
    protection_params = {"n_sink": "n_sink"}
    others = N_("in retrieval heads (every entry)")

    head_ratio: float = param(0.5, N_("Share of all KV heads made streaming (kvpress's head_compression_ratio)."), min=0.0, max=1.0)
    n_sink: int = param(4, N_("First tokens a streaming head keeps, part of the budget."), min=0, max=1024)
    q_len: int = param(500, N_("Positions the mean query and key are repeated over to score the heads."), min=2, max=8192)
    head_scores: list = field(default_factory=list, repr=False, compare=False)
    streaming_heads: dict = field(default_factory=dict, repr=False, compare=False)

    def check_budget(self, budget: int) -> None:
        if budget <= self.n_sink:
            raise PolicyError(_("duo_attention: budget {budget} leaves no recent window after {n_sink} sinks; raise the budget or lower n_sink.")
                              .format(budget=budget, n_sink=self.n_sink))

    def protection(self, budget):
        return Protection(n_sink=self.n_sink, recent=budget - self.n_sink if budget else 0)

    def budget_notes(self, budget):
        notes = super().budget_notes(budget)
        if budget is None:
            return notes
        subject = _("duo_attention's streaming heads ({share} of all KV heads)").format(share=f"{self.head_ratio:.0%}")
        return [Note(n.level, streaming_subject(n.text, subject) if n.level == "info" else n.text) for n in notes] + [Note("info", _(
            "Retrieval heads keep every prompt entry, and a layer that has one holds every entry in all its heads (rectangular"
            " tensors): only layers of streaming heads free memory. The run's details say which heads stream."))]

    def prepare(self, model, tokenizer, prompt_ids):
        rotary = rotary_embedding(model)
        scores: dict[int, torch.Tensor] = {}
        attention_pass(model, prompt_ids, lambda i, call: scores.__setitem__(i, head_score(call, rotary, self.q_len).cpu()))
        self.head_scores = [scores[i] for i in sorted(scores)]
        flat = torch.stack(self.head_scores)  # (layers, kv_heads)
        streaming = torch.zeros(flat.numel(), dtype=torch.bool)
        streaming[flat.flatten().argsort()[: round(flat.numel() * self.head_ratio)]] = True
        self.streaming_heads = {i: row.tolist() for i, row in enumerate(streaming.view(flat.shape))}

    def run_details(self) -> dict[str, str]:
        if not self.streaming_heads:
            return {}
        rows = [f"{i}: " + "".join("S" if s else "R" for s in flags) for i, flags in self.streaming_heads.items()]
        n = sum(map(sum, self.streaming_heads.values()))
        total = sum(map(len, self.streaming_heads.values()))
        return {STREAMING_HEADS: STREAMING_COUNT.format(n=n, total=total, rows=", ".join(rows))}  # saved in the trace: English

    def layer_streaming(self, layer, window: torch.Tensor) -> torch.Tensor:
        """(kv_heads,) bool: this layer's streaming heads, from the pass over the prompt, or ranked
        within the layer by the attention the last query puts outside ``window`` (kv_heads, n)."""
        if self.head_scores:  # classified by the engine's pass over this prompt
            return torch.tensor(self.streaming_heads[layer.layer_idx], device=layer.keys.device)
        last = attention_probs(layer.queries[:, -1:], layer.keys, layer.query_positions[-1:], layer.positions)[:, 0]
        outside = (last * ~window).sum(dim=-1)  # (kv_heads,)
        flags = torch.zeros(layer.kv_heads, dtype=torch.bool, device=layer.keys.device)
        flags[outside.argsort()[: round(layer.kv_heads * self.head_ratio)]] = True
        self.streaming_heads[layer.layer_idx] = flags.tolist()  # this prompt's (the paged engine: the last request's)
        return flags

    def step(self, layer, ctx):
        if not ctx.is_prefill or ctx.budget is None or layer.n <= ctx.budget:
            return None
        window = first_mask(layer.positions, self.n_sink) | recent_mask(layer.positions, ctx.budget - self.n_sink)
        streaming = self.layer_streaming(layer, window)  # (kv_heads,)
        scores = (window | ~streaming[:, None]).float()  # (kv_heads, n): 1 = kept by the press
        if not bool(streaming.all()):
            return Selection(keep=torch.arange(layer.n, device=layer.keys.device).expand(layer.kv_heads, -1), scores=scores)
        return Selection(keep=window.nonzero()[:, 1].view(layer.kv_heads, -1), scores=scores)
