"""KVzip: keep the entries the model needs to repeat its context, whatever the question will be.

Follows ``KVzipPress`` of NVIDIA/kvpress (commit 8bb29b9, kvpress/presses/kvzip_press.py:
``prepare`` lines 225-264 (the repeat prompts, chunks of the context), ``score_kvzip`` lines
287-358 (the maximum attention a context entry gets from the repeat's queries), ``compress_post``
lines 360-395 with ``layerwise=True`` (the layer's entries pruned over all its heads)).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from kvviz.i18n import N_, _
from kvviz.policies.adakv import adaptive_budgets
from kvviz.policies.params import PolicyError, param
from kvviz.policies.selector import ScoredSelector, Selection
from kvviz.policies.scoring import attention_probs, keep_top

FIRST = "\n\nRepeat the previous context exactly."
LATER = "\n\nRepeat the part of the previous context exactly, starting with"
QUERY_CHUNK = 256  # repeat queries scored at a time: no (heads, q, keys) tensor of a whole chunk


def answer_opening(tokenizer) -> str:
    """What follows a user's turn before the model answers: the chat template's assistant opening,
    or a newline for a tokenizer without a template (as the press)."""
    if not getattr(tokenizer, "chat_template", None):
        return "\n"
    dummy = "dummy context"
    separator = "\n" + "#" * len(dummy)
    text = tokenizer.apply_chat_template([{"role": "user", "content": dummy + separator}], add_generation_prompt=True,
                                         tokenize=False)
    return text.split(separator)[-1]


def repeat_inputs(tokenizer, prompt_ids: list[int], chunk_size: int, tail: int = 8) -> list[tuple[int, int, list[int]]]:
    """(start, end, repeat ids) per chunk of the context: the instruction (for a later chunk, with
    the previous chunk's last ``tail`` tokens to start from), the answer's opening, the chunk."""
    def encode(text):
        return list(tokenizer.encode(text, add_special_tokens=False))

    suffix = encode(answer_opening(tokenizer))
    out = []
    for start in range(0, len(prompt_ids), chunk_size):
        end = min(start + chunk_size, len(prompt_ids))
        ask = encode(FIRST) if start == 0 else encode(LATER) + prompt_ids[max(0, start - tail) : start]
        out.append((start, end, ask + suffix + prompt_ids[start:end]))
    return out


def repeat_scores(queries: torch.Tensor, keys: torch.Tensor, start: int, end: int, n_sink: int) -> torch.Tensor:
    """queries (q_heads, r, d) of a repeat of context[start:end], keys (kv_heads, n + r, d) of the
    context and the repeat -> (kv_heads, end - start): the highest attention any repeat query of
    a KV head's group pays each entry of the chunk, the softmax taken over the sinks, the chunk
    and the repeat (causal within the repeat)."""
    r, d = queries.shape[1], queries.shape[2]
    sink = min(n_sink, start)
    sub = torch.cat([keys[:, :sink], keys[:, start:end], keys[:, -r:]], dim=1).float()  # (kv_heads, m, d)
    kv_heads, m = sub.shape[0], sub.shape[1]
    q = queries.float().view(kv_heads, -1, r, d)  # (kv_heads, group, r, d)
    best = torch.zeros(kv_heads, end - start, device=keys.device)
    for a in range(0, r, QUERY_CHUNK):
        b = min(a + QUERY_CHUNK, r)
        logits = torch.einsum("hgqd,hmd->hgqm", q[:, :, a:b], sub) / math.sqrt(d)
        future = torch.arange(m, device=keys.device)[None] > (m - r + torch.arange(a, b, device=keys.device))[:, None]
        probs = logits.masked_fill(future, float("-inf")).softmax(dim=-1)[..., sink : sink + end - start]
        best = torch.maximum(best, probs.amax(dim=(1, 2)))
    return best


@dataclass
class KVzip(ScoredSelector):
    name = "kvzip"
    family = N_("eviction")
    paper = "Kim et al., 2025. KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction"
    paper_url = "https://arxiv.org/abs/2505.23416"
    summary = N_("""Query-agnostic: an entry matters as much as the model needs it to repeat its
    context. Before the prefill, kvviz runs the model over the prompt and then, for each chunk of
    `chunk_size` prompt tokens, over "Repeat the previous context exactly." (later chunks: "...
    the part ..., starting with" and the previous chunk's last 8 tokens), the answer's opening of
    the chat template, and the chunk again; an entry's score is the highest attention any repeat
    query pays it (softmax over the first `n_sink` tokens, the chunk and the repeat; max over a KV
    head's query heads), as kvpress's KVzipPress. At the end of prefill the layer's budget × KV
    heads highest scores over all its heads are chosen with `adaptive` (kvpress's
    `layerwise=True`; by default kvpress spreads one threshold over all layers, so its layers hold
    different amounts); kvviz's tensors are rectangular, so every head then holds the largest
    head's count, topped up with its next-best entries (bytes above the budget, as `adakv`).
    Without `adaptive` (the default) each KV head keeps its own top budget. The scoring pass costs about two prefills more (kvpress: 2-3 times the
    prefill), done on a scratch transformers cache, then dropped. The whole prompt is repeated,
    chat template included (kvpress leaves the template's opening out). A cache built without
    the engine (tests of mechanics, the paged engine), or a tokenizer that cannot encode the
    repeat prompt, has no pass: there an entry's score is the
    highest attention the prompt's own queries pay it. Generated tokens are never evicted.""")
    needs_queries = True  # for the fallback without the engine's pass
    acts_at_decode = False
    others = N_("that the repeat attends to most")

    n_sink: int = param(4, N_("First tokens in every chunk's softmax (attention sinks)."), min=0, max=1024)
    chunk_size: int = param(2048, N_("Prompt tokens repeated per pass (bounds the scoring's memory)."), min=16, max=8192)
    adaptive: bool = param(False, N_("Rank the layer's entries over all its heads, as kvpress (bytes above the budget); off: each head its own top budget."))
    scores_by_layer: list = field(default_factory=list, repr=False, compare=False)

    def prepare(self, model, tokenizer, prompt_ids):
        from transformers import DynamicCache

        from kvviz.model.attention_inputs import AttentionCall, attention_modules
        from kvviz.model.devices import input_device

        self.scores_by_layer = []
        if not callable(getattr(tokenizer, "encode", None)):
            return  # no repeat prompt to write: scored by the prompt's own queries
        n, device = len(prompt_ids), input_device(model)
        # the forward's cache argument: ``cache`` from transformers 5.24, ``past_key_values`` before
        keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        mods = attention_modules(model)
        cache = DynamicCache(config=model.config)
        scores: list[Any] = [None] * len(mods)  # per layer (kv_heads, n), filled below

        def held(i: int) -> Any:  # transformers' DynamicLayer: keys/values (1, kv_heads, n, d)
            return cache.layers[i]

        chunk: tuple[int, int] = (0, n)

        def hook(i):
            def after(module, args, kwargs, output):
                start, end = chunk
                queries = AttentionCall.read(module, args, kwargs).queries()  # (q_heads, r, d)
                part = repeat_scores(queries, held(i).keys[0], start, end, self.n_sink)
                scores[i][:, start:end] = part.to(scores[i].device)
            return after

        with torch.inference_mode():
            model(input_ids=torch.tensor([prompt_ids], device=device), **{keyword: cache}, use_cache=True, logits_to_keep=1)
            for i in range(len(mods)):
                scores[i] = torch.zeros(held(i).keys.shape[1], n, device=held(i).keys.device)
                scores[i][:, : self.n_sink] = 1.0  # the press's start; the first chunk's scores replace it
            handles = [m.register_forward_hook(hook(i), with_kwargs=True) for i, m in enumerate(mods)]
            try:
                for start, end, ids in repeat_inputs(tokenizer, prompt_ids, self.chunk_size):
                    chunk = (start, end)
                    model(input_ids=torch.tensor([ids], device=device), **{keyword: cache}, use_cache=True, logits_to_keep=1)
                    for i in range(len(cache.layers)):  # the context alone again for the next chunk
                        layer = held(i)
                        layer.keys, layer.values = layer.keys[:, :, :n], layer.values[:, :, :n]
            finally:
                for h in handles:
                    h.remove()
        self.scores_by_layer = scores

    def score(self, layer, ctx):
        if layer.layer_idx < len(self.scores_by_layer):
            scores = self.scores_by_layer[layer.layer_idx]
            if scores.shape != layer.positions.shape:
                raise PolicyError(_("kvzip: the repeat pass scored another prompt than the one prefilled."))
            return scores.to(layer.keys.device)
        best = torch.zeros(layer.positions.shape, device=layer.keys.device)  # the prompt's own queries, without the pass
        queries, query_positions = layer.captured_queries()
        for a in range(0, queries.shape[1], QUERY_CHUNK):
            q, at = queries[:, a : a + QUERY_CHUNK], query_positions[a : a + QUERY_CHUNK]
            best = torch.maximum(best, attention_probs(q, layer.keys, at, layer.positions, reduce="max").amax(dim=1))
        return best

    def step(self, layer, ctx):
        if not ctx.is_prefill or ctx.budget is None or layer.n <= ctx.budget:
            return None
        scores = self.score(layer, ctx).float()
        if not self.adaptive:
            return Selection(keep=keep_top(scores, ctx.budget), scores=scores)
        ranked, counts = adaptive_budgets(scores, ctx.budget, 0.0)  # no safeguard, as the press
        return Selection(keep=keep_top(ranked, int(counts.max())), scores=scores)
