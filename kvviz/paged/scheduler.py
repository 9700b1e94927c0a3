"""Which requests run in the next forward and what each feeds: continuous batching over the block
manager, as vLLM (v0) schedules. The scheduler decides; it runs nothing (``engine.py`` hands its
plan to the model runner and the pool to the recorder).

Every step: (1) each running request gets a slot for the token it feeds next; when the pool
has no block for it, the most recently admitted request is preempted (its blocks are given
back and it waits to be recomputed from its tokens, prompt and generated so far: vLLM's
"recompute" preemption); (2) waiting requests are admitted in arrival order while their blocks
fit (a step that preempted admits none); the first that does not fit waits; (3) one forward runs
the new prompts and the decoded tokens together; (4) each request takes its next token. A request
with ``n > 1`` forks into n samples after its prompt: they share the prompt's blocks and copy the
last, partial one when they write to it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kvviz.paged.block_manager import BlockManager, PoolTooSmall
from kvviz.paged.events import RequestAdmitted, RequestFinished, RequestForked, RequestPreempted, RequestWaits
from kvviz.paged.paged_cache import Row


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
    blocks: BlockManager | None = field(default=None, repr=False, compare=False)  # where its block table lives

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.generated

    @property
    def block_table(self) -> list[int | None]:
        """The table it holds, else the last one it held (kept by the block manager)."""
        return self.blocks.table(self.rid) if self.blocks is not None else []


@dataclass
class StepPlan:
    """What one step runs and what the cache must change before it."""

    rows: list[Row] = field(default_factory=list)  # the forward's batch: decodes first, then admitted prompts
    prefills: set[str] = field(default_factory=set)  # rows that compute a prompt (a fork point for n > 1)
    added: dict[str, list[int]] = field(default_factory=dict)  # admitted: the slots of their prefix hits
    removed: list[str] = field(default_factory=list)  # preempted: their entries leave the cache
    copies: list[tuple[str, int, int]] = field(default_factory=list)  # copy-on-write (request, src, dst)


class Scheduler:
    def __init__(self, manager: BlockManager, *, eos: set[int] | frozenset = frozenset(), stop_at_eos: bool = True, evicts: bool = False):
        self.manager, self.eos, self.stop_at_eos, self.evicts = manager, eos, stop_at_eos, evicts
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: list[Request] = []
        self.by_id: dict[str, Request] = {}

    def submit(self, request: Request) -> None:
        m = self.manager
        longest = len(request.prompt_ids) + (1 if self.evicts else request.max_new_tokens)  # an evicting request stays small
        if m.blocks_for(longest) > m.num_blocks:
            raise PoolTooSmall(
                f"the pool of {m.num_blocks} blocks of {m.block_size} tokens cannot hold request {request.rid} alone: "
                f"{longest} tokens need {m.blocks_for(longest)} blocks."
            )
        self._add(request)
        self.waiting.append(request)

    def _add(self, request: Request) -> None:
        request.blocks = self.manager
        self.requests.append(request)
        self.by_id[request.rid] = request

    @property
    def done(self) -> bool:
        return not (self.waiting or self.running)

    # -- before the forward ---------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        """The next step: slots for the running requests (preempting when the pool is full), then
        the waiting ones that fit, unless this step preempted."""
        self.manager.step += 1
        plan = StepPlan()
        if not self._decode_rows(plan):
            self._admit(plan)
        plan.copies, self.manager.copies = self.manager.copies, []
        return plan

    def _decode_rows(self, plan: StepPlan) -> bool:
        """A row per running request; returns whether a request was preempted for room."""
        m, preempted = self.manager, False
        for r in list(self.running):
            if r.status != "running":  # preempted for an earlier request in this loop
                continue
            while m.blocks_to_append(r.rid, 1) > m.available:
                victim = self.running[-1]
                if victim is r and len(self.running) == 1:
                    raise PoolTooSmall(
                        f"the pool of {m.num_blocks} blocks cannot hold request {r.rid} alone at {len(r.tokens)} tokens."
                    )
                self._preempt(victim, plan)
                preempted = True
                if victim is r:
                    break
            if r.status == "running":
                plan.rows.append(Row(r.rid, [r.tokens[-1]], m.append(r.rid, [r.tokens[-1]]), r.cached))
        return preempted

    def _preempt(self, r: Request, plan: StepPlan) -> None:
        self.manager.log(RequestPreempted, request=r.rid, released=self.manager.free(r.rid))
        plan.removed.append(r.rid)
        self.running.remove(r)
        r.status, r.cached = "waiting", 0
        r.preemptions += 1
        self.waiting.appendleft(r)

    def _admit(self, plan: StepPlan) -> None:
        m = self.manager
        while self.waiting:
            r = self.waiting[0]
            tokens = r.tokens
            if m.blocks_needed(tokens) > m.available:
                if not self.running:
                    raise PoolTooSmall(f"the pool of {m.num_blocks} blocks cannot hold request {r.rid} alone at {len(tokens)} tokens.")
                m.log(RequestWaits, request=r.rid, needs=m.blocks_needed(tokens), available=m.available)
                break
            self.waiting.popleft()
            m.log(RequestAdmitted, request=r.rid, tokens=len(tokens), hit_tokens=len(m.prefix_hits(tokens)) * m.block_size,
                  resumed=r.preemptions > 0)
            hit = m.allocate(r.rid, tokens)
            plan.added[r.rid] = m.slots(r.rid)
            plan.rows.append(Row(r.rid, tokens[hit:], m.append(r.rid, tokens[hit:]), hit))
            plan.prefills.add(r.rid)
            r.prefix_hit_blocks += hit // m.block_size
            r.status = "running"
            self.running.append(r)

    # -- after the forward ----------------------------------------------------------------------

    def computed(self, r: Request, prefill: bool) -> list[Request]:
        """``r``'s fed tokens are in the pool; after a prompt with ``n > 1`` its other samples
        fork from it (returned: each takes its first token from the same logits)."""
        r.cached = len(r.tokens)
        children = []
        if prefill and r.n > 1 and not r.generated:
            at = self.running.index(r)
            for k in range(1, r.n):
                child = Request(f"{r.rid}.{k}", r.prompt_ids, r.max_new_tokens, r.seed + k, cached=r.cached, status="running")
                self.manager.fork(r.rid, child.rid)
                self.manager.log(RequestForked, request=child.rid, parent=r.rid)
                self._add(child)
                self.running.insert(at + k, child)
                children.append(child)
        return children

    def take(self, r: Request, token: int) -> None:
        r.generated.append(token)
        if len(r.generated) >= r.max_new_tokens or (self.stop_at_eos and token in self.eos):
            r.status = "finished"  # its blocks go back at the end of the step

    def release_finished(self) -> list[str]:
        """Give back the blocks of the requests that finished in this step; returns their ids."""
        finished = [r for r in self.running if r.status == "finished"]
        for r in finished:
            self.manager.log(RequestFinished, request=r.rid, released=self.manager.free(r.rid))
            self.running.remove(r)
        return [r.rid for r in finished]
