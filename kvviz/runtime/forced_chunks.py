"""A teacher-forced continuation read in chunks, where the cache evicts nothing after the prompt.

A forced run knows its tokens before it starts. When nothing decides at decode (no selector acts
after the prompt, no retriever picks a read set, and the store holds each token on its own: the
full cache, SnapKV, PyramidKV and every other prompt-only selector, per-token quantization), the cache at step ``s`` is the
compressed prompt plus the first ``s`` forced tokens, whatever forwards put them there. So the
continuation goes through the model in forwards of up to ``chunk`` tokens: each reads what the
cache holds and its own tokens causally, as the question after a compressed context does, and
gives the log-probabilities of ``chunk`` steps at once. A sweep's full-cache reference and its
prompt-only points then cost about one prefill each instead of one decode step per token.

The arithmetic is the decode steps' (the same entries at the same positions), grouped into larger
matrix products: the log-probabilities agree with a step-by-step run up to rounding
(``tests/integration/test_forced_chunks.py`` pins both, and the byte records exactly). What each
step held is recorded as the stepped run records it: the cache's bytes grow by one entry per token
and layer, read before and after each chunk. ``trace.timings["decode_path"]`` is "chunked" and each
step's time is its chunk's share. On a model with sliding-window layers a chunk over the full cache
keeps the model's own mask (its window included), and one over a compressed cache gets a mask per
KV head from the positions held (``policy_cache.window_mask``), as a decode step does. The
attention mass lost to eviction (``capture_queries``) is the prompt's at step 0 and none after it,
as a stepped run of such a cache records it.
"""

from __future__ import annotations

import time

import torch

from kvviz.policies.selector import Retriever

CHUNK = 256  # tokens per forward: (chunk, vocab) log-probabilities in float32 at once


def why_not(cache, options) -> str | None:
    """None when this run's continuation can be read in chunks; else why it steps."""
    if options.forced_chunk < 2:
        return "asked for step by step"
    if options.forced_ids is None:
        return "not teacher-forced on given tokens"
    return policy_steps(cache.pipeline, [layer.store for layer in cache.layers if layer.store is not None])


def policy_steps(pipeline, stores) -> str | None:
    """Why a forced run of ``pipeline`` whose layers hold ``stores`` steps; None: it reads its
    continuation in chunks."""
    if not all(store.per_token() for store in stores):
        return "its store does not hold each token on its own"
    if isinstance(pipeline.reader or pipeline.selector, Retriever):
        return "a retriever picks what each step reads"
    if pipeline.selector is not None and pipeline.selector.acts_at_decode:
        return "its selector evicts at decode"
    return None


def reads_in_chunks(pipeline) -> bool:
    """Whether a forced run of ``pipeline`` reads its continuation in chunks (by default), before
    any run: its store is made on the meta device to ask (a store that refuses counts as not)."""
    stores = []
    if pipeline.storage is not None:
        try:
            stores.append(pipeline.storage.make_store(0, 1, 1, 64, torch.float32, torch.device("meta")))
        except Exception:  # noqa: BLE001 - a shape this store refuses: the run itself will say why
            return False
    return policy_steps(pipeline, stores) is None


def decode(cache, shape, logits: torch.Tensor, options, records, forward, should_stop=None, on_chunk=None) -> str:
    """Record every step of ``options.forced_ids`` after the prefill's ``logits`` (1, 1, vocab):
    step ``s``'s log-probabilities are those after the forced tokens before it. ``forward(ids,
    positions)`` runs the model over new tokens and returns their logits (1, q, vocab);
    ``should_stop`` is asked before each chunk; ``on_chunk(first, last)`` hears the steps recorded.
    Returns why the run ended ("max_new_tokens" or "user")."""
    forced, prompt_len = options.forced_ids, cache.prompt_len
    device = logits.device
    t = time.perf_counter()
    records.add(logits[0, -1].float().log_softmax(-1), cache, shape)
    done = 1  # steps recorded
    records.step_s.append(time.perf_counter() - t)
    if on_chunk is not None:
        on_chunk(0, 1)
    while done < len(forced):
        if should_stop is not None and should_stop():
            return "user"
        t = time.perf_counter()
        k = min(options.forced_chunk, len(forced) - done)
        ids = torch.tensor([forced[done - 1 : done - 1 + k]], device=device)  # the tokens of steps done-1 ...
        before = records.sizes(cache, shape)
        out = forward(ids, torch.arange(prompt_len + done - 1, prompt_len + done - 1 + k, device=device))
        records.add_appended(out[0].float().log_softmax(-1), before, records.sizes(cache, shape))  # row j: step done + j
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()
        share = (time.perf_counter() - t) / k
        records.step_s.extend([share] * k)
        if on_chunk is not None:
            on_chunk(done, done + k)
        done += k
    return "max_new_tokens"
