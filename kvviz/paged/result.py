"""The record of one paged run, in plain Python (no torch): what the page draws and the CLI prints.

``frames[k]`` is the pool after scheduler step k (frame 0: before anything): every block's
state, reference count, filled slots and owners, each request's block table, the live share of
every slot, held tokens vs reserved slots, and the events of the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PagedRun:
    model: str
    device: str
    policy: str  # PolicySpec text, "full" without eviction
    eviction: str  # "token" or "block" (meaningful with an eviction policy)
    block_size: int
    num_blocks: int
    bytes_per_token: int  # keys and values of every layer, in the model's dtype
    requests: list[dict]  # id, prompt_index, sample_index, prompt_tokens, generated_*, block_table, ...
    frames: list[dict]
    peak_blocks_used: int
    waste: dict  # kvviz.paged.waste.waste() of the finished requests
    elapsed_s: float
    notes: list[str] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for f in self.frames for e in f["events"] if e["kind"] == kind)

    @property
    def prefix_hit_blocks(self) -> int:
        return self.count("prefix_hit")

    @property
    def cow_copies(self) -> int:
        return self.count("cow")

    @property
    def preemptions(self) -> int:
        return self.count("preempt")

    @property
    def block_bytes(self) -> int:
        return self.block_size * self.bytes_per_token

    def summary(self) -> dict:
        """The CLI's JSON: everything but the frames (held tokens and reserved slots per step kept)."""
        return {
            "model": self.model,
            "device": self.device,
            "policy": self.policy,
            "eviction": self.eviction,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "bytes_per_token": self.bytes_per_token,
            "requests": self.requests,
            "prefix_hit_blocks": self.prefix_hit_blocks,
            "cow_copies": self.cow_copies,
            "preemptions": self.preemptions,
            "peak_blocks_used": self.peak_blocks_used,
            "held_tokens": [round(f["held_tokens"], 3) for f in self.frames],
            "reserved_slots": [f["reserved_slots"] for f in self.frames],
            "waste": self.waste,
            "steps": len(self.frames) - 1,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def describe(event: dict) -> str:
    """One sentence for an event of the log."""
    r, b, d = event.get("request"), event.get("block"), event.get("detail", {})
    kind = event["kind"]
    if kind == "admit":
        resumed = " again (recomputed after preemption)" if d.get("resumed") else ""
        hit = f", {d['hit_tokens']} from the prefix cache" if d.get("hit_tokens") else ""
        return f"{r} admitted{resumed}: {d.get('tokens')} tokens{hit}"
    if kind == "prefix_hit":
        return f"{r} reuses block {b} for its logical block {d.get('logical')} (prefix hit, {d.get('ref_count')} readers)"
    if kind == "allocate":
        return f"{r} takes block {b} for its logical block {d.get('logical')}"
    if kind == "cow":
        return f"{r} writes to shared block {d.get('src')}: copied to block {b} first (copy-on-write)"
    if kind == "fork":
        return f"{r} forks from {d.get('parent')}: shares all its blocks"
    if kind == "evict_cached":
        return f"cached block {b} is reused for {r}: its prefix leaves the cache (least recently used)"
    if kind == "wait":
        return f"{r} waits: needs {d.get('needs')} blocks, {d.get('available')} available"
    if kind == "preempt":
        return f"{r} preempted: its blocks go back ({', '.join(map(str, d.get('released', []))) or 'none freed'}); it will be recomputed"
    if kind == "finish":
        return f"{r} finished: blocks {', '.join(map(str, d.get('released', []))) or 'none'} freed (hashed ones stay cached)"
    if kind == "drop":
        return f"{r} no longer reads any slot of block {b} (logical {d.get('logical')}): released"
    return f"{kind} {r or ''} {b if b is not None else ''}".strip()
