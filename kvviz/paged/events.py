"""What happened in a paged run, as typed values: each a small frozen dataclass stamped with the
scheduler step. Block events come from the block manager, request events from the scheduler,
``EntriesEvicted`` from the eviction policy. ``to_dict`` gives the plain form the page, the
charts and the CLI read: ``{"step", "kind", "request", "block", "detail"}``. No torch here."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

BASE = ("step", "request", "block")


@dataclass(frozen=True, kw_only=True)
class Event:
    kind: ClassVar[str]
    step: int
    request: str | None = None
    block: int | None = None

    @property
    def detail(self) -> dict:
        """Every field but the step, the request and the block."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in BASE}

    def to_dict(self) -> dict:
        return {"step": self.step, "kind": self.kind, "request": self.request, "block": self.block, "detail": self.detail}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


# -- blocks (the block manager) ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BlockAllocated(Event):
    """A free (or evicted cached) block now stores the request's logical block."""
    kind: ClassVar[str] = "allocate"
    logical: int


@dataclass(frozen=True, kw_only=True)
class PrefixHit(Event):
    """A block with the same chained hash is reused for the request's logical block."""
    kind: ClassVar[str] = "prefix_hit"
    logical: int
    ref_count: int


@dataclass(frozen=True, kw_only=True)
class BlockCopied(Event):
    """Copy-on-write: the shared block ``src`` is copied into ``block`` before the request writes."""
    kind: ClassVar[str] = "cow"
    src: int
    logical: int


@dataclass(frozen=True, kw_only=True)
class CachedBlockEvicted(Event):
    """A cached free block is taken for another request: its prefix leaves the cache."""
    kind: ClassVar[str] = "evict_cached"


@dataclass(frozen=True, kw_only=True)
class BlockDropped(Event):
    """Token eviction left no entry of the request in the block: it is removed from its table."""
    kind: ClassVar[str] = "drop"
    logical: int


# -- requests (the scheduler) ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RequestAdmitted(Event):
    """Admitted with ``tokens`` to compute, ``hit_tokens`` of them from the prefix cache;
    ``resumed``: recomputed after a preemption."""
    kind: ClassVar[str] = "admit"
    tokens: int
    hit_tokens: int
    resumed: bool


@dataclass(frozen=True, kw_only=True)
class RequestWaits(Event):
    kind: ClassVar[str] = "wait"
    needs: int
    available: int


@dataclass(frozen=True, kw_only=True)
class RequestPreempted(Event):
    """Pushed out for lack of a block: ``released`` go back, it will be recomputed."""
    kind: ClassVar[str] = "preempt"
    released: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class RequestFinished(Event):
    kind: ClassVar[str] = "finish"
    released: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class RequestForked(Event):
    """A sample of ``parent``'s prompt (n > 1): shares all its blocks."""
    kind: ClassVar[str] = "fork"
    parent: str


# -- the eviction policy --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EntriesEvicted(Event):
    """``policy`` evicted ``entries`` (layer, KV head) entries of the request in one forward."""
    kind: ClassVar[str] = "evict"
    entries: int
    tokens: float
    policy: str
