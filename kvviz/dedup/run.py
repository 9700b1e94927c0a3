"""Decode from a cache that holds each repeated span once, and measure what the copy costs.

A later occurrence of a span gets the KV of its first occurrence: values as they are, keys
re-rotated by the model's own RoPE from the source positions to the new ones (RoPE is a rotation
per frequency pair, so rotating a key stored at position ``s`` by ``shift`` gives the key at
``s + shift``). Only layer 0 makes the copy exact: from layer 1 on, a token's KV depends on all
tokens before it, and the tokens before the two occurrences differ.

``DedupLayer`` really holds one copy: its tensors hold the computed entries only, with their
positions, and a link per copied span; attention reads the layer assembled (the copies rotated on
the fly, as a quantized store dequantizes on read). The prompt is prefilled segment by segment:
the tokens between repeats are computed from the cache as it is (copies included), so what follows
a copied span pays for it; the next tokens are then teacher-forced on the full cache's greedy
output and compared step by step (KL, top-1).

Partial recompute (CacheBlend, Yao et al., 2024): per layer, the given share of the copied tokens
whose KV deviates most from the full cache's is held recomputed instead of linked. The deviation
that ranks them is read from the full cache (an oracle: CacheBlend ranks by the deviation it
measures on the tokens it recomputes in the layer before), and a recomputed entry takes the full
cache's KV, so share 1.0 is the full cache.
"""

from __future__ import annotations

import math
from typing import Any
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from kvviz.dedup.spans import Repeat, find_repeats, groups
from kvviz.model.attention_inputs import attention_modules, rope
from kvviz.runtime.engine import cache_keyword

SHARES = (0.0, 0.1, 0.2, 0.5, 1.0)
MAX_NEW_TOKENS = 64
MAX_PROMPT_TOKENS = 512  # the page runs the model once per recompute share: bounded on a CPU
MAX_COMPARED = 16  # next tokens the page compares (its slider's top)
MIN_SPAN = (2, 64)  # the page's slider of the shortest repeated span, in tokens
INDEX_BYTES = 8  # an int64 position per held entry, and per linked span (source, start, length)


class DedupLayer(DynamicLayer):
    """One layer: held entries (computed or recomputed) at their positions, and links to copies."""

    def __init__(self, rerotate):
        super().__init__()
        self.rerotate = rerotate  # (keys (1, kv_heads, n, head_dim), shift) -> keys rotated by shift
        self.held_positions: list[int] = []
        self.links: list[Repeat] = []
        self.length = 0

    def _hold(self, keys: torch.Tensor, values: torch.Tensor, positions: list[int]) -> None:
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        self.keys = torch.cat([self.keys, keys], dim=-2)  # (1, kv_heads, held, head_dim)
        self.values = torch.cat([self.values, values], dim=-2)
        self.held_positions += positions

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        self._hold(key_states, value_states, list(range(self.length, self.length + n)))
        self.length += n
        return self.assembled()

    def append_copy(self, repeat: Repeat, recomputed: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        """The span ``repeat`` at the end of the layer: the ``recomputed`` positions held with
        ``keys``/``values`` (1, kv_heads, len(recomputed), head_dim), the others linked."""
        if repeat.start != self.length:
            raise ValueError(f"a copy goes at the end of the layer ({self.length}), not at {repeat.start}")
        if recomputed:
            self._hold(keys, values, recomputed)
        self.links.append(repeat)
        self.length += repeat.length

    def assembled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values at every position, copies rotated to theirs: (1, kv_heads, length, head_dim)."""
        shape = (*self.keys.shape[:2], self.length, self.keys.shape[-1])
        keys, values = self.keys.new_empty(shape), self.values.new_empty(shape)
        held = set(self.held_positions)
        for r in self.links:
            copied = [p for p in r.positions() if p not in held]
            if not copied:
                continue
            src = torch.tensor([p - r.shift for p in copied], device=keys.device)
            dst = torch.tensor(copied, device=keys.device)
            keys[:, :, dst] = self.rerotate(self._read(self.keys, src), r.shift)
            values[:, :, dst] = self._read(self.values, src)
        index = torch.tensor(self.held_positions, device=keys.device)
        keys[:, :, index] = self.keys
        values[:, :, index] = self.values
        return keys, values

    def _read(self, held: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        rows = {p: i for i, p in enumerate(self.held_positions)}
        return held[:, :, torch.tensor([rows[int(p)] for p in positions], dtype=torch.long, device=held.device)]

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    @property
    def held_bytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    @property
    def index_bytes(self) -> int:
        return INDEX_BYTES * (len(self.held_positions) + 3 * len(self.links))


class DedupCache(Cache):
    layers: list[DedupLayer]

    def __init__(self, n_layers: int, rerotate):
        super().__init__(layers=[DedupLayer(rerotate) for _ in range(n_layers)])


def rerotate_fn(model):
    """keys (1, kv_heads, n, head_dim) at positions p -> the same keys at p + shift, by the model's RoPE."""
    rotary = model.model.rotary_emb
    if getattr(rotary, "attention_scaling", 1.0) != 1.0:
        raise ValueError("this model scales its RoPE (attention_scaling != 1): a re-rotation would scale twice")
    module = attention_modules(model)[0]

    def rerotate(keys: torch.Tensor, shift: int) -> torch.Tensor:
        cos, sin = rotary(keys, torch.full((1, keys.shape[-2]), shift, device=keys.device))
        return rope(module, keys, cos.to(keys.dtype), sin.to(keys.dtype))

    return rerotate


@dataclass
class ShareResult:
    share: float
    recomputed_tokens: int  # per layer
    kv_bytes: int
    index_bytes: int
    logprobs: torch.Tensor = field(repr=False)  # (steps, vocab), float32
    kl: list[float] = field(default_factory=list)  # per next token, KL(full || dedup) in nats
    top1: list[bool] = field(default_factory=list)  # dedup's argmax equals the full cache's

    def compare(self, full_logprobs: torch.Tensor) -> None:
        """KL(full || dedup) and top-1 agreement per step, from the two log-prob rows."""
        self.kl = (full_logprobs.exp() * (full_logprobs - self.logprobs)).sum(-1).clamp_min(0).tolist()
        self.top1 = (full_logprobs.argmax(-1) == self.logprobs.argmax(-1)).tolist()

    def summary(self) -> dict[str, Any]:
        return {"share": self.share, "recomputed_tokens_per_layer": self.recomputed_tokens, "kv_bytes": self.kv_bytes,
                "index_bytes": self.index_bytes, "kl_mean": sum(self.kl) / len(self.kl), "kl": self.kl,
                "top1_agreement": sum(self.top1) / len(self.top1)}


@dataclass
class DedupRun:
    prompt_ids: list[int]
    min_len: int
    repeats: list[Repeat]
    full_ids: list[int]  # the full cache's greedy output
    full_bytes: int
    key_deviation: list[float]  # per layer: ||copied - full|| / ||full|| over the copied tokens' keys
    value_deviation: list[float]
    token_deviation: torch.Tensor = field(repr=False)  # (layers, copied tokens): what ranks them for recompute
    full_logprobs: torch.Tensor = field(repr=False)  # (steps, vocab)
    shares: list[ShareResult] = field(default_factory=list)

    def summary(self, tokenizer=None) -> dict[str, Any]:
        spans: list[dict[str, Any]] = groups(self.prompt_ids, self.repeats)
        if tokenizer is not None:
            for s in spans:
                s["text"] = tokenizer.decode(s["tokens"])
        return {
            "prompt_tokens": len(self.prompt_ids), "prompt_ids": self.prompt_ids, "min_len": self.min_len, "spans": spans,
            "repeats": [{"source": r.source, "start": r.start, "length": r.length} for r in self.repeats],
            "copied_tokens": sum(r.length for r in self.repeats),
            "full_bytes": self.full_bytes, "key_deviation": self.key_deviation, "value_deviation": self.value_deviation,
            "next_tokens": self.full_ids, "recompute": [s.summary() for s in self.shares],
        }


def _forward(model, cache, ids: list[int], start: int) -> torch.Tensor:
    """Log-probs (q_len, vocab) of ids fed at positions start.. on the cache."""
    device = model.device
    out = model(input_ids=torch.tensor([ids], device=device), position_ids=torch.arange(start, start + len(ids), device=device)[None],
                use_cache=True, **{cache_keyword(model): cache})
    return torch.log_softmax(out.logits[0].float(), dim=-1)


def _deviation(full: list[tuple[torch.Tensor, torch.Tensor]], repeats: list[Repeat], rerotate):
    """Per layer: relative key and value distance of the copies, and per copied token their sum."""
    keys_dev, values_dev, per_token = [], [], []
    for k, v in full:
        ck = torch.cat([rerotate(k[:, :, r.source:r.source + r.length], r.shift) for r in repeats], dim=-2).float()
        cv = torch.cat([v[:, :, r.source:r.source + r.length] for r in repeats], dim=-2).float()
        tk = torch.cat([k[:, :, r.start:r.start + r.length] for r in repeats], dim=-2).float()
        tv = torch.cat([v[:, :, r.start:r.start + r.length] for r in repeats], dim=-2).float()
        keys_dev.append(float((ck - tk).norm() / tk.norm()))
        values_dev.append(float((cv - tv).norm() / tv.norm()))
        # (copied tokens,): relative distance of each token's keys and values over heads
        per_token.append(_token_norm(ck - tk) / _token_norm(tk) + _token_norm(cv - tv) / _token_norm(tv))
    return keys_dev, values_dev, torch.stack(per_token)


def _token_norm(x: torch.Tensor) -> torch.Tensor:
    """(1, kv_heads, n, head_dim) -> (n,): the norm of each position over heads and channels."""
    return x.square().sum(dim=(0, 1, 3)).sqrt()


@torch.no_grad()
def run_dedup(model, prompt_ids: list[int], min_len: int = 8, shares=SHARES, new_tokens: int = 8) -> DedupRun:
    """Repeats of ``prompt_ids``, their per-layer deviation, and the next ``new_tokens`` from the
    deduplicated cache at each recompute share, against the full cache."""
    if not 1 <= new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"new tokens must be between 1 and {MAX_NEW_TOKENS}, got {new_tokens}")
    if any(not 0.0 <= s <= 1.0 for s in shares):
        raise ValueError(f"recompute shares must be between 0 and 1, got {list(shares)}")
    repeats = find_repeats(prompt_ids, min_len)
    if not repeats:
        raise ValueError(f"no span of {min_len} or more tokens appears twice in the prompt: nothing to deduplicate")
    rerotate = rerotate_fn(model)
    n_layers = model.config.num_hidden_layers

    full = DynamicCache()
    logprobs = [_forward(model, full, prompt_ids, 0)[-1]]
    full_kv = [(layer.keys.clone(), layer.values.clone()) for layer in full.layers]  # (1, kv_heads, n, head_dim)
    full_bytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in full_kv)
    generated = [int(logprobs[-1].argmax())]
    for step in range(new_tokens - 1):
        logprobs.append(_forward(model, full, generated[-1:], len(prompt_ids) + step)[-1])
        generated.append(int(logprobs[-1].argmax()))
    keys_dev, values_dev, per_token = _deviation(full_kv, repeats, rerotate)
    run = DedupRun(prompt_ids, min_len, repeats, generated, full_bytes, keys_dev, values_dev, per_token, torch.stack(logprobs))
    copied = [p for r in repeats for p in r.positions()]
    for share in shares:
        k = math.ceil(share * len(copied) - 1e-9)
        recomputed = [sorted(copied[i] for i in per_token[layer].topk(k).indices.tolist()) for layer in range(n_layers)]
        result = _decode_dedup(model, prompt_ids, repeats, full_kv, recomputed, generated, share, rerotate)
        result.compare(run.full_logprobs)
        run.shares.append(result)
    return run


def _decode_dedup(model, prompt_ids, repeats, full_kv, recomputed, forced, share, rerotate) -> ShareResult:
    cache = DedupCache(len(full_kv), rerotate)
    logprobs, pos = None, 0
    for r in repeats:
        if r.start > pos:
            logprobs = _forward(model, cache, prompt_ids[pos:r.start], pos)
        for i, (layer, (k, v)) in enumerate(zip(cache.layers, full_kv)):
            mine = [p for p in recomputed[i] if r.start <= p < r.start + r.length]
            layer.append_copy(r, mine, k[:, :, mine], v[:, :, mine])
        pos, logprobs = r.start + r.length, None  # logits come from the tokens after a copy
    if pos < len(prompt_ids):
        logprobs = _forward(model, cache, prompt_ids[pos:], pos)
    if logprobs is None:
        raise ValueError("the prompt ends with a repeat: the copy gives no logits; add a question after it")
    kv_bytes = sum(layer.held_bytes for layer in cache.layers)
    index_bytes = sum(layer.index_bytes for layer in cache.layers)
    steps = [logprobs[-1]]
    for step, token in enumerate(forced[:-1]):
        steps.append(_forward(model, cache, [token], len(prompt_ids) + step)[-1])
    return ShareResult(share, len(recomputed[0]), kv_bytes, index_bytes, torch.stack(steps))
