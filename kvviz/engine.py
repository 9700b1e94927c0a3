"""kvviz's own prefill/decode loop over a PolicyCache, recording a Trace.

The loop passes explicit position ids (the tokens' true positions), so it does not depend on how
``generate`` or a cache derives positions, and it works across transformers releases (the model
call's cache keyword is ``past_key_values`` up to 5.23 and ``cache`` from 5.24).

Greedy by default; sampling with a seed as an option; teacher forcing (``forced_ids``) runs a
given continuation through the policy, for perplexity and for per-step KL against the full cache.
"""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from kvviz import metrics, policies
from kvviz import graphs
from kvviz.cache import PolicyCache
from kvviz.policies import PolicyError
from kvviz.spec import PolicySpec
from kvviz.text import PromptError, token_texts
from kvviz.trace import Trace

_active = threading.local()  # the PolicyCache of the run on this thread, for the query hooks


@dataclass
class StepEvent:
    """Passed to ``on_step`` after each generated token, for live views."""

    step: int
    token_id: int
    token: str
    kv_bytes: int
    kv_bytes_full: int
    held_entries: int


def cache_keyword(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def attention_modules(model) -> list[torch.nn.Module]:
    layers = model.model.layers if hasattr(model, "model") else model.layers
    return [layer.self_attn for layer in layers]


def _query_hook(cache: PolicyCache, layer_idx: int):
    """A forward pre-hook on one attention module: computes the layer's queries (RoPE applied)
    for the cache of the run on this thread; other runs sharing the model are left alone.

    ``kwargs`` may be missing: while another thread registers or removes its hooks, PyTorch can
    call a hook without them for a moment; such a call is never this thread's own forward."""

    def hook(module, args, kwargs=None):
        if kwargs is None or getattr(_active, "cache", None) is not cache:
            return None
        cache.queries[layer_idx] = (layer_queries(module, args, kwargs)[0], cache.current_positions)
        return None

    return hook


def layer_queries(module, args, kwargs) -> torch.Tensor:
    """The queries an attention module is about to compute, RoPE applied, from its forward's
    arguments: (batch, q_heads, q_len, head_dim)."""
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    cos, sin = kwargs["position_embeddings"]  # (batch, q_len, head_dim)
    q = module.q_proj(hidden).view(*hidden.shape[:-1], -1, module.head_dim)
    if hasattr(module, "q_norm"):
        q = module.q_norm(q)
    return rotate(q.transpose(1, 2), cos[:, None], sin[:, None])


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as Llama applies it (rotate-half convention); cos, sin: (q_len, head_dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def resolve_spec(policy, params, budget, ratio) -> tuple[policies.Pipeline, PolicySpec | None]:
    """The pipeline to run and, unless a ready Pipeline was given, the PolicySpec it came from."""
    if isinstance(policy, policies.Pipeline):
        return policy, None
    spec = policy if isinstance(policy, PolicySpec) else PolicySpec.create(policy, params, budget=budget, ratio=ratio)
    return spec.pipeline(), spec


@torch.inference_mode()
def run(
    model,
    tokenizer,
    prompt_ids: list[int],
    policy: str | PolicySpec | policies.Pipeline = "full",
    params: dict | None = None,
    *,
    budget: int | None = None,
    ratio: float | None = None,
    max_new_tokens: int = 32,
    forced_ids: list[int] | None = None,
    reference_logprobs: torch.Tensor | None = None,
    sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    stop_at_eos: bool = True,
    top_k: int = 5,
    model_name: str = "",
    on_step: Callable[[StepEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    keep_logprobs: bool = False,
    capture_queries: bool = False,
    cuda_graphs: bool = True,
) -> Trace:
    """Prefill ``prompt_ids`` and decode under ``policy``; return the Trace.

    ``forced_ids``: teacher forcing: feed these tokens (one step each) instead of the model's
    choices; ``max_new_tokens`` is then len(forced_ids). ``reference_logprobs`` (steps, vocab):
    the log-probabilities of a reference run (e.g. the full cache) for per-step KL and top-1
    agreement. ``capture_queries`` computes each layer's queries even for policies that do not
    score with them, to measure the attention mass that fell on evicted entries (the views
    ask for it; benchmarks leave it off). With ``keep_logprobs`` the per-step log-probabilities
    stay on the trace as ``trace.extra["logprobs"]`` (a tensor, not saved). With ``cuda_graphs``
    (CUDA only, fixed-budget selectors marked graph safe) decode steps are replayed from a CUDA
    graph once every layer holds its budget: see kvviz/graphs.py.
    """
    pipeline, spec = resolve_spec(policy, params, budget, ratio)
    config = model.config
    n_layers = config.num_hidden_layers
    n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    max_ctx = getattr(config, "max_position_embeddings", None)
    prompt_ids = [int(i) for i in prompt_ids]
    if not prompt_ids:
        raise PromptError("The prompt is empty.")
    if forced_ids is not None:
        forced_ids = [int(i) for i in forced_ids]
        max_new_tokens = len(forced_ids)
    if max_new_tokens < 1:
        raise PolicyError("max_new_tokens must be at least 1.")
    total = len(prompt_ids) + max_new_tokens
    if max_ctx and total > max_ctx:
        raise PromptError(
            f"The prompt ({len(prompt_ids)} tokens) plus {max_new_tokens} new tokens exceeds the model's context of {max_ctx}."
        )
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    cache = PolicyCache(
        pipeline, n_layers, len(prompt_ids), total, n_kv, device, generator=generator, measure_lost_mass=capture_queries
    )
    bytes_per_token = 2 * n_layers * n_kv * head_dim * torch.empty(0, dtype=model.dtype).element_size()
    eos = eos_ids(tokenizer, config)
    kw = cache_keyword(model)

    hooks = []
    if cache.needs_queries or (capture_queries and pipeline.selector is not None):
        hooks = [
            m.register_forward_pre_hook(_query_hook(cache, i), with_kwargs=True)
            for i, m in enumerate(attention_modules(model))
        ]
    previous = getattr(_active, "cache", None)
    _active.cache = cache
    logprob_rows, lost_rows, kv_bytes, kv_full, book, step_s = [], [], [], [], [], []
    generated: list[int] = []
    stopped_by = "max_new_tokens"
    use_graphs = cuda_graphs and graphs.usable(cache, device, sample)
    graph = None
    try:
        t0 = time.perf_counter()
        ids = torch.tensor([prompt_ids], device=device)
        logits = _forward(model, kw, cache, ids, torch.arange(len(prompt_ids), device=device))
        t_prefill = _sync_time(device) - t0
        if not pipeline.selector or not pipeline.selector.acts_at_decode:
            _remove(hooks)  # prompt-only selectors (SnapKV) need no queries while decoding
        for step in range(max_new_tokens):
            t_step = time.perf_counter()
            logprobs = logits[0, -1].float().log_softmax(-1)
            logprob_rows.append(logprobs)
            lost_rows.append(cache.lost_mass_now.clone())
            cache.lost_mass_now.zero_()
            kv_bytes.append(cache.kv_bytes())
            kv_full.append(cache.layers[0].seen * bytes_per_token)
            book.append(cache.bookkeeping_bytes())
            if forced_ids is not None:
                token = forced_ids[step]
            elif sample:
                probs = (logprobs / max(temperature, 1e-5)).softmax(-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            else:
                token = int(logprobs.argmax())
            generated.append(token)
            if on_step is not None:
                on_step(StepEvent(step, token, tokenizer.decode([token]), kv_bytes[-1], kv_full[-1], len(cache.layers[0])))
            if stop_at_eos and forced_ids is None and token in eos:
                stopped_by = "eos"
                step_s.append(time.perf_counter() - t_step)
                break
            if should_stop is not None and should_stop():
                stopped_by = "user"
                step_s.append(time.perf_counter() - t_step)
                break
            if step == max_new_tokens - 1:
                step_s.append(time.perf_counter() - t_step)
                break
            cache.set_step(step + 1)
            position = len(prompt_ids) + step
            if graph is None and use_graphs and cache.steady():
                graph = graphs.DecodeGraph(lambda i, p: _forward(model, kw, cache, i, p), cache, device)
            if graph is not None:
                logits = graph.step(token, position)
            else:
                logits = _forward(model, kw, cache, torch.tensor([[token]], device=device), torch.tensor([position], device=device))
            step_s.append(_sync_time(device) - t_step)
        t_total = time.perf_counter() - t0
    finally:
        _remove(hooks)
        _active.cache = previous

    logprobs_all = torch.stack(logprob_rows)  # (steps, vocab)
    probs_all = logprobs_all.exp()
    topk = probs_all.topk(min(top_k, probs_all.shape[-1]), dim=-1)
    entropy = -(probs_all * logprobs_all.clamp_min(-1e30)).nansum(-1)
    gen_t = torch.tensor(generated, device=device)
    chosen = logprobs_all.gather(1, gen_t[:, None])[:, 0]
    kl = top1 = None
    if reference_logprobs is not None:
        ref = reference_logprobs[: len(generated)].to(device).float()
        steps = ref.shape[0]
        kl = (ref.exp() * (ref - logprobs_all[:steps])).nansum(-1).clamp_min(0).cpu().numpy()
        top1 = (ref.argmax(-1) == logprobs_all[:steps].argmax(-1)).cpu().numpy()
    n_pos = len(prompt_ids) + len(generated)
    trace = Trace(
        model=model_name or getattr(config, "_name_or_path", "") or type(model).__name__,
        device=str(device),
        dtype=str(model.dtype).replace("torch.", ""),
        policy=pipeline.spec,
        params=pipeline.params(),
        spec=spec.to_dict() if spec is not None else None,
        prompt_ids=prompt_ids,
        generated_ids=generated,
        tokens=token_texts(tokenizer, prompt_ids + generated),
        n_layers=n_layers,
        n_kv_heads=n_kv,
        n_q_heads=config.num_attention_heads,
        head_dim=head_dim,
        budget=cache.budget,
        layer_budgets=cache.layer_budgets,
        evicted_at_step=cache.evicted_at[:, :, :n_pos].cpu().numpy(),
        scores=cache.scores[:, :, :n_pos].cpu().numpy(),
        kv_bytes=kv_bytes,
        kv_bytes_full=kv_full,
        bookkeeping_bytes=book,
        lost_mass=torch.stack(lost_rows).cpu().numpy() if capture_queries else np.full((len(lost_rows), n_layers), np.nan, np.float32),
        topk_ids=topk.indices.cpu().numpy(),
        topk_probs=topk.values.float().cpu().numpy(),
        entropy=entropy.float().cpu().numpy(),
        chosen_logprob=chosen.float().cpu().numpy(),
        timings={"prefill_s": t_prefill, "decode_s": float(sum(step_s)), "step_s": step_s, "total_s": t_total},
        kl_to_reference=kl,
        top1_agreement=top1,
        teacher_forced=forced_ids is not None,
        stopped_by=stopped_by,
        quant_error=_quant_error(cache),
    )
    if keep_logprobs:
        trace.extra["logprobs"] = logprobs_all
    return trace


def _forward(model, kw, cache: PolicyCache, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """ids (1, q_len), positions (q_len,) -> logits (1, 1, vocab) of the last position."""
    cache.current_positions = positions
    out = model(input_ids=ids, position_ids=positions[None], use_cache=True, logits_to_keep=1, **{kw: cache})
    return out.logits


def _remove(hooks: list) -> None:
    for h in hooks:
        h.remove()
    hooks.clear()


def _sync_time(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def eos_ids(tokenizer, config) -> set[int]:
    """The token ids that end generation: the tokenizer's and the config's end-of-sequence ids."""
    ids = set()
    for v in (getattr(tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids


def _quant_error(cache: PolicyCache) -> dict | None:
    stats = [getattr(layer.store, "error_stats", lambda: None)() for layer in cache.layers if layer.store is not None]
    if not stats or stats[0] is None:
        return None
    out = {"key": [s["key"] for s in stats], "value": [s["value"] for s in stats]}
    if "residual" in stats[0]:
        out["residual"] = stats[0]["residual"]
    return out


# ---------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """A policy beside the full cache on the same prompt."""

    full: Trace  # the full cache, free generation
    policy: Trace  # the policy, free generation
    forced: Trace  # the policy, teacher-forced on the full cache's tokens (per-step KL, top-1)

    @property
    def first_divergence(self) -> int | None:
        """Index of the first generated token that differs, or None if the outputs agree."""
        return metrics.first_divergence(self.full.generated_ids, self.policy.generated_ids)


def compare_runs(
    model, tokenizer, prompt_ids, policy, params=None, *, budget=None, ratio=None, max_new_tokens=32,
    on_policy_step=None, on_full_step=None, **kw,
):
    """The three runs of a comparison, yielded as ``(phase, trace)`` when each ends: "policy"
    (free generation), "full" (the full cache, free generation) and "forced" (the policy
    teacher-forced on the full cache's output, with per-step KL and top-1 agreement against it).
    A consumer may stop iterating after any phase (a live view that was stopped)."""
    yield "policy", run(
        model, tokenizer, prompt_ids, policy, params, budget=budget, ratio=ratio,
        max_new_tokens=max_new_tokens, on_step=on_policy_step, **kw,
    )
    full = run(model, tokenizer, prompt_ids, "full", max_new_tokens=max_new_tokens, keep_logprobs=True, on_step=on_full_step, **kw)
    reference = full.extra.pop("logprobs")
    yield "full", full
    yield "forced", run(
        model, tokenizer, prompt_ids, policy, params, budget=budget, ratio=ratio,
        forced_ids=full.generated_ids, reference_logprobs=reference, **kw,
    )


def compare(model, tokenizer, prompt_ids, policy, params=None, **kw) -> Comparison:
    """Run the policy and the full cache on the same prompt, and the policy teacher-forced on the
    full cache's output to measure per-step KL and top-1 agreement."""
    runs = dict(compare_runs(model, tokenizer, prompt_ids, policy, params, **kw))
    return Comparison(full=runs["full"], policy=runs["policy"], forced=runs["forced"])


def perplexity(trace: Trace) -> float:
    """Perplexity of a teacher-forced continuation: exp of the mean negative log-likelihood of
    each forced token given everything before it (the first forced token is scored by the
    prefill's logits)."""
    return metrics.perplexity(trace.chosen_logprob)
