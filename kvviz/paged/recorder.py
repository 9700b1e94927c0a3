"""Frames of a paged run for the page: the pool after every step, with the step's events. It
reads the block manager, the scheduler's requests and the runner's live shares; it changes none."""

from __future__ import annotations

from typing import Callable

from kvviz.paged.block_manager import BlockManager


class Recorder:
    def __init__(self, manager: BlockManager, requests: list, live: Callable[[], list[list[float]] | None]):
        self.manager, self.requests, self.live = manager, requests, live
        self.frames: list[dict] = [self.frame()]

    def frame(self) -> dict:
        """The pool now. ``live`` (blocks, block_size): the fraction of each slot's (layer, KV head)
        entries that some request reads; ``held_tokens`` sums it over the blocks in use (token
        equivalents), ``reserved_slots`` counts their slots."""
        m, pool = self.manager, self.manager.snapshot()
        live = self.live()
        if live is None:
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

    def record(self, frame: dict, first_event: int) -> None:
        """Keep ``frame`` (taken during the step) with the step's events from ``first_event`` on;
        checks the block manager's invariants first (a demo or a test: every step)."""
        self.manager.check()
        self.frames.append(frame | {"events": self.manager.events[first_event:]})
