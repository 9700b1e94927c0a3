"""Runs the model for the scheduler's plan: the pool of K/V blocks, the ``PagedCache`` that reads
each request through it, the eviction policy's hooks, and sampling (greedy, or with each
request's own seeded generator). It decides nothing about which request runs."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from kvviz.paged.block_manager import BlockManager
from kvviz.paged.eviction import PagedEviction
from kvviz.paged.paged_cache import KVPool, PagedCache, Row, forward
from kvviz.paged.scheduler import StepPlan
from kvviz.policies import Pipeline
from kvviz.runtime.engine import cache_keyword


class ModelRunner:
    def __init__(self, model, manager: BlockManager, *, pipeline: Pipeline | None = None, eviction: str = "token",
                 sample: bool = False, temperature: float = 1.0):
        config = model.config
        self.model, self.manager = model, manager  # the evictor drops emptied blocks through the manager
        self.n_layers = config.num_hidden_layers
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.device = next(model.parameters()).device
        self.pool = KVPool(self.n_layers, manager.num_blocks, manager.block_size, kv_heads, head_dim, model.dtype, self.device)
        self.evictor = PagedEviction(self, pipeline, eviction) if pipeline is not None else None
        self.cache = PagedCache(self.pool, self.n_layers, self.evictor)
        self.cache_kw = cache_keyword(model)
        self.sample, self.temperature = sample, temperature
        self.generators: dict[str, torch.Generator] = {}  # kept across preemptions: a resumed request draws on

    def add_request(self, rid: str, seed: int) -> None:
        self.generators[rid] = torch.Generator(device=self.device).manual_seed(seed)

    @contextmanager
    def attached(self):
        """The eviction policy's query hooks on the model, for one run (removed after)."""
        hooks = self.evictor.attach(self.model) if self.evictor is not None else []
        try:
            with torch.inference_mode():
                yield
        finally:
            if self.evictor is not None:
                self.evictor.detach(hooks)

    def prepare(self, plan: StepPlan) -> None:
        """The cache as the plan needs it: preempted requests out, admitted ones in (with their
        prefix hits), shared blocks copied before they are written."""
        for rid in plan.removed:
            self.cache.remove(rid)
        for rid, slots in plan.added.items():
            self.cache.add(rid, slots)
        for rid, src, dst in plan.copies:
            self.pool.copy_blocks([(src, dst)])
            self.cache.moved(rid, src, dst)

    def forward(self, rows: list[Row]) -> list[torch.Tensor]:
        """One forward of the batch; each row's next-token log-probabilities, (vocab,) each."""
        logits = forward(self.model, self.cache, rows, self.cache_kw)
        return [row_logits.float().log_softmax(-1) for row_logits in logits]

    def fork(self, parent: str, child: str, seed: int) -> None:
        self.cache.fork(parent, child)
        self.add_request(child, seed)

    def sample_token(self, rid: str, logprobs: torch.Tensor) -> int:
        if self.sample:
            probs = (logprobs / max(self.temperature, 1e-5)).softmax(-1)
            return int(torch.multinomial(probs, 1, generator=self.generators[rid]))
        return int(logprobs.argmax())

    def remove(self, rid: str) -> None:
        self.cache.remove(rid)

    def live_fraction(self) -> list[list[float]] | None:
        """Per block and slot, the share of (layer, KV head) entries still read; None without eviction."""
        return self.evictor.live_fraction() if self.evictor is not None else None
