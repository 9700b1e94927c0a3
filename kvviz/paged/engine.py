"""One paged run, step by step: the scheduler decides, the model runner runs the model, the
recorder records (as nano-vllm's ``LLMEngine.step``: schedule, run, postprocess)."""

from __future__ import annotations

from kvviz.paged.block_manager import BlockManager
from kvviz.paged.recorder import Recorder
from kvviz.paged.runner import ModelRunner
from kvviz.paged.scheduler import Request, Scheduler
from kvviz.policies import BudgetSelector, Pipeline
from kvviz.runtime.engine import eos_ids


class PagedEngine:
    def __init__(
        self, model, tokenizer, num_blocks: int, block_size: int, *, pipeline: Pipeline | None = None,
        eviction: str = "token", prefix_caching: bool = True, sample: bool = False, temperature: float = 1.0,
        stop_at_eos: bool = True, record_frames: bool = True,
    ):
        self.manager = BlockManager(num_blocks, block_size, prefix_caching)
        evicts = pipeline is not None and (isinstance(pipeline.selector, BudgetSelector) or pipeline.storage is not None)
        self.runner = ModelRunner(model, self.manager, pipeline=pipeline if evicts else None, eviction=eviction,
                                  sample=sample, temperature=temperature)
        self.scheduler = Scheduler(self.manager, eos=eos_ids(tokenizer, model.config), stop_at_eos=stop_at_eos, evicts=evicts)
        self.recorder = Recorder(self.manager, self.scheduler.requests, self.runner.live_fraction) if record_frames else None
        self.frames: list[dict] = self.recorder.frames if self.recorder else []  # False: no snapshots (benchmarks)

    @property
    def requests(self) -> list[Request]:
        return self.scheduler.requests

    @property
    def pool(self):
        return self.runner.pool

    @property
    def device(self):
        return self.runner.device

    def submit(self, request: Request) -> None:
        self.scheduler.submit(request)
        self.runner.add_request(request.rid, request.seed)

    def run(self) -> list[Request]:
        with self.runner.attached():
            while not self.scheduler.done:
                self.step()
        self.manager.check()
        self.manager.step += 1
        if self.recorder:
            self.frames.append(self.recorder.frame())  # every request done: what stays cached
        return self.requests

    def step(self) -> None:
        first = len(self.manager.events)  # this step's events start here
        plan = self.scheduler.schedule()
        self.runner.prepare(plan)
        if plan.rows:
            for row, logprobs in zip(plan.rows, self.runner.forward(plan.rows)):
                r = self.scheduler.by_id[row.rid]
                for child in self.scheduler.computed(r, prefill=row.rid in plan.prefills):
                    self.runner.fork(r.rid, child.rid, child.seed)
                    self.scheduler.take(child, self.runner.sample_token(child.rid, logprobs))
                self.scheduler.take(r, self.runner.sample_token(r.rid, logprobs))
        frame = self.recorder.frame() if self.recorder else None  # during the step: finished requests still hold their blocks
        for rid in self.scheduler.release_finished():
            self.runner.remove(rid)
        if self.recorder:
            self.recorder.record(frame, first)
