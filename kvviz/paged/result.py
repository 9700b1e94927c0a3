"""The record of one paged run, in plain Python (no torch): what the page draws and the CLI prints.

``frames[k]`` is the pool after scheduler step k (frame 0: before anything): every block's
state, reference count, filled slots and owners, each request's block table, the live share of
every slot, held tokens vs reserved slots, and the events of the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvviz.i18n import N_, _
from kvviz.paged.waste import BLOCK_SIZES, Sized, waste


@dataclass
class PagedRun:
    model: str
    device: str
    policy: str  # PolicySpec text, "full" without eviction
    eviction: str  # "token" or "block" (meaningful with an eviction policy)
    block_size: int
    num_blocks: int
    bytes_per_token: int  # keys and values of every layer, in the model's dtype
    max_context: int  # the model's, what ``reserve_max`` reserves per request
    max_new_tokens: int
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

    @property
    def pool_bytes(self) -> int:
        return self.num_blocks * self.block_bytes

    def waste_for(self, budget_bytes: int) -> dict:
        """``waste`` again for another memory budget (no model involved)."""
        sizes = [Sized(r["prompt_token_ids"], r["generated_token_ids"], self.max_new_tokens) for r in self.requests]
        block_sizes = tuple(sorted(set(BLOCK_SIZES) | {self.block_size}))
        return waste(sizes, self.bytes_per_token, self.max_context, block_sizes, budget_bytes)

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


EVENT_TEXT = {  # N_-marked: ``describe`` gives them in the session's language (English outside the app: the CLI, JSON)
    "prefix_hit": N_("{request} reuses block {block} for its logical block {logical} (prefix hit, {ref_count} readers)"),
    "allocate": N_("{request} takes block {block} for its logical block {logical}"),
    "cow": N_("{request} writes to shared block {src}: copied to block {block} first (copy-on-write)"),
    "fork": N_("{request} forks from {parent}: shares all its blocks"),
    "evict_cached": N_("cached block {block} is reused for {request}: its prefix leaves the cache (least recently used)"),
    "wait": N_("{request} waits: needs {needs} blocks, {available} available"),
    "preempt": N_("{request} preempted: blocks {released} go back; it will be recomputed"),
    "finish": N_("{request} finished: blocks {released} freed (hashed ones stay cached)"),
    "drop": N_("{request} no longer reads any slot of block {block} (logical {logical}): released"),
    "evict": N_("{policy} evicted {entries} entries of {request} over its layers and KV heads ({tokens} tokens' worth); "
                "their slots stay reserved until a whole block is empty"),
}


def describe(event: dict) -> str:
    """One sentence for an event of the log, in the session's language (English outside the app)."""
    d = dict(event.get("detail", {}))
    if "released" in d:
        d["released"] = ", ".join(map(str, d["released"])) or _("none")
    if event["kind"] == "admit":
        if d.get("resumed"):
            text = (_("{request} admitted again (recomputed after preemption): {tokens} tokens, {hit} from the prefix cache") if d.get("hit_tokens")
                    else _("{request} admitted again (recomputed after preemption): {tokens} tokens"))
        else:
            text = (_("{request} admitted: {tokens} tokens, {hit} from the prefix cache") if d.get("hit_tokens")
                    else _("{request} admitted: {tokens} tokens"))
        return text.format(request=event["request"], tokens=d.get("tokens"), hit=d.get("hit_tokens"))
    template = _(EVENT_TEXT[event["kind"]]) if event["kind"] in EVENT_TEXT else "{kind} {request}"
    return template.format(kind=event["kind"], request=event.get("request"), block=event.get("block"), **d)
