"""What a run records on its way, and the Trace built from it at the end (``kvviz.runtime.engine``
runs; this reads): the log-probabilities and the bytes the cache held at each step, a retriever's
read sets, the device records read once, KL and top-1 against a reference run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from kvviz.model import devices
from kvviz.record.text import token_texts
from kvviz.record.trace import Trace
from kvviz.runtime.policy_cache import PolicyCache

if TYPE_CHECKING:
    from kvviz.policies.spec import PolicySpec
    from kvviz.runtime.engine import DecodeOptions, ModelShape


@dataclass
class StepRecords:
    """What the cache held and what the model predicted at each step, collected on the way."""

    logprobs: list[torch.Tensor] = field(default_factory=list)  # (vocab,) per step
    lost_mass: list[torch.Tensor] = field(default_factory=list)  # (layers,) per step
    kv_bytes: list[int] = field(default_factory=list)
    kv_bytes_full: list[int] = field(default_factory=list)
    bookkeeping_bytes: list[int] = field(default_factory=list)
    read_bytes: list[int] = field(default_factory=list)  # a retriever's: K/V bytes each step read
    summary_bytes: list[int] = field(default_factory=list)  # a retriever's: bytes of its key summaries
    read: list[torch.Tensor] = field(default_factory=list)  # a retriever's: (layers, kv_heads, capacity) bool per step
    recall: list[torch.Tensor] = field(default_factory=list)  # a retriever's: (layers,) top-k recall per step
    step_s: list[float] = field(default_factory=list)

    def add(self, logprobs: torch.Tensor, cache: PolicyCache, shape: ModelShape) -> None:
        self.logprobs.append(logprobs)
        self.lost_mass.append(cache.take_lost_mass())
        if cache.reader is not None:
            self.recall.append(cache.take_recall())
        self._add_sizes(self.sizes(cache, shape))
        if cache.reader is not None:
            self.read_bytes.append(cache.read_bytes())
            self.summary_bytes.append(cache.summary_bytes())
            self.read.append(cache.read_now(len(self.kv_bytes) - 1))

    @staticmethod
    def sizes(cache: PolicyCache, shape: ModelShape) -> tuple[int, int, int]:
        """(K/V bytes held, the full cache's bytes for the tokens seen, bookkeeping bytes) now."""
        return cache.kv_bytes(), cache.layers[0].seen * shape.full_bytes_per_token, cache.bookkeeping_bytes()

    def add_appended(self, logprobs: torch.Tensor, before: tuple[int, int, int], after: tuple[int, int, int]) -> None:
        """The steps of k tokens appended in one forward (``kvviz.runtime.forced_chunks``), evicting
        nothing: logprobs (k, vocab), row j the step after j + 1 of them; ``sizes`` before and after
        the forward, which grew by the same bytes per token."""
        k = logprobs.shape[0]
        grown = [b - a for a, b in zip(before, after)]
        if any(g % k for g in grown):
            raise RuntimeError(f"the cache grew by {grown} bytes over {k} tokens: not one entry per token")
        lost = self.lost_mass[-1]
        for j in range(k):
            self.logprobs.append(logprobs[j])
            self.lost_mass.append(torch.zeros_like(lost))  # nothing evicted after the prompt
            self._add_sizes(tuple(a + (j + 1) * g // k for a, g in zip(before, grown)))

    def _add_sizes(self, sizes) -> None:
        kv, full, book = sizes
        self.kv_bytes.append(kv)
        self.kv_bytes_full.append(full)
        self.bookkeeping_bytes.append(book)


def device_memory(model, cache: PolicyCache) -> dict[str, dict]:
    """Per device of a split model, at the end of a run: its layers, the bytes of weights and of
    the K/V cache held there, and what torch had allocated there in all (CUDA only)."""
    weights = devices.weights_by_device(model)
    kv = cache.kv_bytes_by_device()
    allocated = devices.allocated_by_device(cache.layer_devices)
    out = {}
    for device, layers in devices.layers_by_device(cache.layer_devices).items():
        name = str(device)
        out[name] = {"layers": layers, "weights_bytes": weights.get(name, 0), "kv_bytes": kv.get(name, 0)}
        if name in allocated:
            out[name]["allocated_bytes"] = allocated[name]
    for name, size in weights.items():  # a device holding weights but no decoder layer (the embeddings, lm_head)
        out.setdefault(name, {"layers": [], "weights_bytes": size, "kv_bytes": 0})
    return out


def build_trace(
    model, tokenizer, spec: PolicySpec | None, cache: PolicyCache, shape: ModelShape, prompt_ids: list[int],
    generated: list[int], records: StepRecords, options: DecodeOptions, timings: dict, stopped_by: str,
    model_name: str = "",
) -> Trace:
    """The Trace of a finished run: reads the cache's device records once."""
    logprobs = torch.stack(records.logprobs)  # (steps, vocab)
    probs = logprobs.exp()
    topk = probs.topk(min(options.top_k, probs.shape[-1]), dim=-1)
    entropy = -(probs * logprobs.clamp_min(-1e30)).nansum(-1)
    chosen = logprobs.gather(1, torch.tensor(generated, device=logprobs.device)[:, None])[:, 0]
    kl = top1 = None
    if options.reference_logprobs is not None:
        kl, top1 = against_reference(logprobs, options.reference_logprobs)
    n_pos = len(prompt_ids) + len(generated)
    pipeline = cache.pipeline
    trace = Trace(
        model=model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        device=str(logprobs.device),
        dtype=str(model.dtype).replace("torch.", ""),
        policy=pipeline.spec,
        params=pipeline.params(),
        spec=spec.to_dict() if spec is not None else None,
        prompt_ids=prompt_ids,
        generated_ids=generated,
        tokens=token_texts(tokenizer, prompt_ids + generated),
        n_layers=shape.n_layers,
        n_kv_heads=shape.n_kv_heads,
        n_q_heads=shape.n_q_heads,
        head_dim=shape.head_dim,
        budget=cache.budget,
        layer_budgets=cache.layer_budgets,
        evicted_at_step=cache.evicted_at[:, :, :n_pos].cpu().numpy(),
        scores=cache.scores[:, :, :n_pos].cpu().numpy(),
        kv_bytes=records.kv_bytes,
        kv_bytes_full=records.kv_bytes_full,
        bookkeeping_bytes=records.bookkeeping_bytes,
        lost_mass=torch.stack(records.lost_mass).cpu().numpy()
        if options.capture_queries
        else np.full((len(records.lost_mass), shape.n_layers), np.nan, np.float32),
        topk_ids=topk.indices.cpu().numpy(),
        topk_probs=topk.values.float().cpu().numpy(),
        entropy=entropy.float().cpu().numpy(),
        chosen_logprob=chosen.float().cpu().numpy(),
        timings=timings,
        kl_to_reference=kl,
        top1_agreement=top1,
        teacher_forced=options.forced,
        stopped_by=stopped_by,
        store_error=cache.store_error(),
        protection=cache.protection,
        read_bytes=records.read_bytes or None,
        read_mask=torch.stack(records.read)[..., :n_pos].cpu().numpy() if records.read else None,
        recall=torch.stack(records.recall).cpu().numpy() if records.recall else None,
        summary_bytes=records.summary_bytes or None,
    )
    if options.keep_logprobs:
        trace.extra["logprobs"] = logprobs
    return trace


def against_reference(logprobs: torch.Tensor, reference: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per step, KL(reference ‖ run) in nats and whether the two agree on the top token; both
    (steps, vocab) log-probs, the reference cut to the run's steps."""
    ref = reference[: logprobs.shape[0]].to(logprobs.device).float()
    steps = ref.shape[0]
    kl = (ref.exp() * (ref - logprobs[:steps])).nansum(-1).clamp_min(0).cpu().numpy()
    top1 = (ref.argmax(-1) == logprobs[:steps].argmax(-1)).cpu().numpy()
    return kl, top1
