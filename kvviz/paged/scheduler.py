"""A small continuous-batching scheduler over the paged cache, as vLLM's (v0) does it.

Every step: (1) each running request gets a slot for the token it feeds next; when the pool
has no block for it, the most recently admitted request is preempted (its blocks are given
back and it waits to be recomputed from its tokens, prompt and generated so far: vLLM's
"recompute" preemption); (2) waiting requests are admitted in arrival order while their blocks
fit (a step that preempted admits none); the first that does not fit waits; (3) one forward runs
the new prompts and the decoded tokens together; (4) each request takes its next token, greedy
or sampled with its own seeded generator. A request with ``n > 1`` forks into n samples after
its prompt: they share the prompt's blocks and copy the last, partial one when they write to it.

``frames`` holds the pool after every step, with the step's events, for the page.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from kvviz.runtime.engine import cache_keyword, eos_ids
from kvviz.paged.block_manager import BlockManager, PoolTooSmall
from kvviz.paged.paged_cache import KVPool, PagedCache, Row, forward
from kvviz.paged.eviction import PagedEviction
from kvviz.policies import BudgetSelector, Pipeline


@dataclass
class Request:
    rid: str
    prompt_ids: list[int]
    max_new_tokens: int
    seed: int = 0
    n: int = 1  # parallel samples from this prompt
    generated: list[int] = field(default_factory=list)
    cached: int = 0  # tokens whose keys and values are in the pool
    prefix_hit_blocks: int = 0
    preemptions: int = 0
    status: str = "waiting"  # waiting, running, finished
    block_table: list[int | None] = field(default_factory=list)  # the last one it held
    generator: torch.Generator | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.generated


class Scheduler:
    def __init__(
        self, model, tokenizer, num_blocks: int, block_size: int, *, pipeline: Pipeline | None = None,
        eviction: str = "token", prefix_caching: bool = True, sample: bool = False, temperature: float = 1.0,
        stop_at_eos: bool = True, record_frames: bool = True,
    ):
        config = model.config
        self.model, self.tokenizer = model, tokenizer
        self.n_layers = config.num_hidden_layers
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.device = next(model.parameters()).device
        self.manager = BlockManager(num_blocks, block_size, prefix_caching)
        self.pool = KVPool(self.n_layers, num_blocks, block_size, kv_heads, head_dim, model.dtype, self.device)
        evicts = pipeline is not None and (isinstance(pipeline.selector, BudgetSelector) or pipeline.storage is not None)
        self.evictor = PagedEviction(self, pipeline, eviction) if evicts else None
        self.cache = PagedCache(self.pool, self.n_layers, self.evictor)
        self.sample, self.temperature, self.stop_at_eos = sample, temperature, stop_at_eos
        self.eos = eos_ids(tokenizer, config)
        self.cache_kw = cache_keyword(model)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: list[Request] = []
        self.record_frames = record_frames  # False: no snapshots (benchmarks)
        self.frames: list[dict] = [self.frame()] if record_frames else []

    # -- requests -------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        bs, nb = self.manager.block_size, self.manager.num_blocks
        longest = len(request.prompt_ids) + (1 if self.evictor else request.max_new_tokens)
        if self.manager.blocks_for(longest) > nb:
            raise PoolTooSmall(
                f"the pool of {nb} blocks of {bs} tokens cannot hold request {request.rid} alone: "
                f"{longest} tokens need {self.manager.blocks_for(longest)} blocks."
            )
        request.generator = torch.Generator(device=self.device).manual_seed(request.seed)
        self.waiting.append(request)
        self.requests.append(request)

    def run(self) -> list[Request]:
        hooks = self.evictor.attach(self.model) if self.evictor is not None else []
        try:
            with torch.inference_mode():
                while self.waiting or self.running:
                    self.step()
        finally:
            if self.evictor is not None:
                self.evictor.detach(hooks)
        self.manager.check()
        self.manager.step += 1
        if self.record_frames:
            self.frames.append(self.frame())  # every request done: what stays cached
        return self.requests

    # -- one step -------------------------------------------------------------------------------

    def step(self) -> None:
        m = self.manager
        m.step += 1
        first = len(m.events)  # this step's events start here
        rows = self._decode_rows()
        admitted = [] if any(e.kind == "preempt" for e in m.events[first:]) else self._admit()
        rows += admitted
        for rid, src, dst in m.copies:
            self.pool.copy_blocks([(src, dst)])
            self.cache.moved(rid, src, dst)
        m.copies.clear()
        if rows:
            logits = forward(self.model, self.cache, rows, self.cache_kw)
            by_id = {r.rid: r for r in self.requests}
            for row, row_logits in zip(rows, logits):
                self._next_token(by_id[row.rid], row_logits.float().log_softmax(-1), forks=row in admitted)
        frame = self.frame() if self.record_frames else {}  # the pool during the step: finished requests still hold their blocks
        for r in [r for r in self.running if r.status == "finished"]:
            r.block_table = list(m.tables[r.rid])
            m.free(r.rid, "finish")
            self.cache.remove(r.rid)
            self.running.remove(r)
        if self.record_frames:  # a demo or a test: check the invariants at every step
            m.check()
            self.frames.append(frame | {"events": m.events[first:]})

    def _decode_rows(self) -> list[Row]:
        m, rows = self.manager, []
        for r in list(self.running):
            if r.status != "running":  # preempted for an earlier request in this loop
                continue
            while m.blocks_to_append(r.rid, 1) > m.available:
                victim = self.running[-1]
                if victim is r and len(self.running) == 1:
                    raise PoolTooSmall(
                        f"the pool of {m.num_blocks} blocks cannot hold request {r.rid} alone at {len(r.tokens)} tokens."
                    )
                self._preempt(victim)
                if victim is r:
                    break
            if r.status == "running":
                rows.append(Row(r.rid, [r.tokens[-1]], m.append(r.rid, [r.tokens[-1]]), r.cached))
        return rows

    def _preempt(self, r: Request) -> None:
        r.block_table = list(self.manager.tables[r.rid])
        self.manager.free(r.rid, "preempt")
        self.cache.remove(r.rid)
        self.running.remove(r)
        r.status, r.cached = "waiting", 0
        r.preemptions += 1
        self.waiting.appendleft(r)

    def _admit(self) -> list[Row]:
        m, rows = self.manager, []
        while self.waiting:
            r = self.waiting[0]
            tokens = r.tokens
            if m.blocks_needed(tokens) > m.available:
                if not self.running:
                    raise PoolTooSmall(f"the pool of {m.num_blocks} blocks cannot hold request {r.rid} alone at {len(tokens)} tokens.")
                m.log("wait", r.rid, needs=m.blocks_needed(tokens), available=m.available)
                break
            self.waiting.popleft()
            m.log("admit", r.rid, tokens=len(tokens), hit_tokens=len(m.prefix_hits(tokens)) * m.block_size, resumed=r.preemptions > 0)
            hit = m.allocate(r.rid, tokens)
            self.cache.add(r.rid, m.slots(r.rid))
            rows.append(Row(r.rid, tokens[hit:], m.append(r.rid, tokens[hit:]), hit))
            r.prefix_hit_blocks += hit // m.block_size
            r.status = "running"
            self.running.append(r)
        return rows

    def _next_token(self, r: Request, logprobs: torch.Tensor, forks: bool) -> None:
        """Choose ``r``'s next token; after a prompt with ``n > 1``, fork the other samples first
        (each draws its first token from the same logits with its own generator)."""
        r.cached = len(r.tokens)
        if forks and r.n > 1 and not r.generated:
            at = self.running.index(r)
            for k in range(1, r.n):
                child = Request(f"{r.rid}.{k}", r.prompt_ids, r.max_new_tokens, r.seed + k, cached=r.cached, status="running")
                child.generator = torch.Generator(device=self.device).manual_seed(child.seed)
                self.manager.fork(r.rid, child.rid)
                self.cache.fork(r.rid, child.rid)
                self.requests.append(child)
                self.running.insert(at + k, child)
                self._take(child, logprobs)
        self._take(r, logprobs)

    def _take(self, r: Request, logprobs: torch.Tensor) -> None:
        if self.sample:
            probs = (logprobs / max(self.temperature, 1e-5)).softmax(-1)
            token = int(torch.multinomial(probs, 1, generator=r.generator))
        else:
            token = int(logprobs.argmax())
        r.generated.append(token)
        if len(r.generated) >= r.max_new_tokens or (self.stop_at_eos and token in self.eos):
            r.status = "finished"  # its blocks go back at the end of the step

    # -- what the page shows --------------------------------------------------------------------

    def frame(self) -> dict:
        """The pool during this step (after its forward). ``live`` (blocks, block_size): the fraction of each slot's
        (layer, KV head) entries that some request reads; ``held_tokens`` sums it over the
        blocks in use (token equivalents), ``reserved_slots`` counts their slots."""
        m, pool = self.manager, self.manager.snapshot()
        if self.evictor is not None:
            live = self.evictor.live_fraction()
        else:
            live = [[1.0] * f + [0.0] * (m.block_size - f) if s == "used" else [0.0] * m.block_size for s, f in zip(pool["state"], pool["filled"])]
        used = [b for b, s in enumerate(pool["state"]) if s == "used"]
        return {
            "step": m.step,
            "events": [e for e in m.events if e.step == m.step],
            "pool": pool,
            "live": live,
            "held_tokens": sum(sum(live[b]) for b in used),
            "reserved_slots": len(used) * m.block_size,
            "requests": {r.rid: {"status": r.status, "tokens": len(r.tokens), "cached": r.cached} for r in self.requests},
        }
