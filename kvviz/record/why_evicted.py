"""Why a policy evicted a token: in each layer and KV head that dropped it, its score against the
cut at the step it left.

The cut is recorded by ``kvviz.compare.run`` while the policy runs (``trace.extra["score_cut"]``,
(steps, layers, kv_heads)): the lowest score among the entries kept on merit at that step. The
token's own score is the Trace's ``scores`` (the last score that decided, which for an evicted
entry is the score at the step it left). A policy whose scores are the token positions (a
sliding window, StreamingLLM) evicts by recency and has no score to compare: the view says so.

numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvviz.i18n import _
from kvviz.record.token_states import clamp_step, one_line, quoted
from kvviz.record.trace import Trace


@dataclass(frozen=True)
class EvictionCell:
    layer: int
    head: int  # KV head
    step: int  # the step at which this layer and head evicted the token
    score: float | None  # the token's score then; None: not scored
    cut: float | None  # the lowest score kept on merit then; None: not recorded


@dataclass(frozen=True)
class EvictionReason:
    position: int
    token: str  # untrusted text: escape it where it becomes HTML
    step: int  # the step in view
    policy: str
    by_recency: bool
    cells: tuple[EvictionCell, ...]  # the layers and KV heads that had evicted it by ``step``
    n_cells: int  # layers × KV heads
    budget: int | None
    n_sink: int

    def summary(self) -> str:
        """One or two plain sentences (escape them before they become HTML or markdown)."""
        who = _("#{position} {token}").format(position=self.position, token=quoted(self.token))
        if not self.cells:
            return _("{who} is held by every layer and KV head at step {step}.").format(who=who, step=self.step)
        first = min(c.step for c in self.cells)
        where = _("every layer and KV head") if len(self.cells) == self.n_cells else _(
            "{n} of {total} layer × KV heads").format(n=len(self.cells), total=self.n_cells)
        left = _("{who} left the cache in {where} by step {step} (first at step {first}).").format(
            who=who, where=where, step=self.step, first=first)
        values = dict(left=left, policy=self.policy)
        if self.by_recency:
            if self.budget is None:
                window = ""
            elif self.n_sink:
                window = _(" The budget holds {budget} entries per KV head: the first {n_sink} tokens (attention sinks) and "
                           "the newest {newest}; this token left when newer tokens filled that window.").format(
                    budget=self.budget, n_sink=self.n_sink, newest=self.budget - self.n_sink)
            else:
                window = _(" The budget holds {budget} entries per KV head: "
                           "the newest {newest}; this token left when newer tokens filled that window.").format(
                    budget=self.budget, newest=self.budget - self.n_sink)
            return _("{left} {policy} evicts by recency, not by a score: there is no score to compare.{window}").format(
                window=window, **values)
        scores = np.array([np.nan if c.score is None else c.score for c in self.cells], dtype=float)
        cuts = np.array([np.nan if c.cut is None else c.cut for c in self.cells], dtype=float)
        if not np.isfinite(scores).any():
            return _("{left} {policy} recorded no score for it.").format(**values)
        score = f"{np.nanmedian(scores):.4g}"
        if not np.isfinite(cuts).any():
            return _("{left} Its score when it left: median {score} (the cut was not recorded for this run).").format(
                score=score, **values)
        return _(
            "{left} Where it left, its score was below the cut: median {score} against "
            "{cut}, the lowest score {policy} kept on merit at that step in that layer and KV head."
        ).format(score=score, cut=f"{np.nanmedian(cuts):.4g}", **values)

    def rows(self) -> list[dict]:
        """One row per layer and KV head that evicted the token: for a table."""
        return [
            {
                "layer": c.layer,
                "KV head": c.head,
                "evicted at step": c.step,
                "its score": c.score,
                "cut (lowest kept on merit)": c.cut,
                "below the cut by": None if c.score is None or c.cut is None else c.cut - c.score,
            }
            for c in self.cells
        ]


def evicts_by_recency(trace: Trace) -> bool:
    """True when every score the policy recorded is the entry's position (newest = highest)."""
    scores = trace.scores
    scored = np.isfinite(scores)
    if not scored.any():
        return False
    positions = np.broadcast_to(np.arange(trace.n_positions, dtype=np.float32), scores.shape)
    return bool(np.array_equal(scores[scored], positions[scored]))


def evicted_positions(trace: Trace, step: int) -> list[int]:
    """Positions that at least one layer and KV head had evicted by ``step``."""
    step = clamp_step(trace, step)
    ev = trace.evicted_at_step  # (layers, kv_heads, positions)
    gone = (ev >= 0) & (ev <= step)
    return np.flatnonzero(gone.any(axis=(0, 1))).tolist()


def most_evicted(trace: Trace, step: int) -> int | None:
    """The position evicted by the most layers and KV heads by ``step`` (the first such); None if none."""
    step = clamp_step(trace, step)
    ev = trace.evicted_at_step
    count = ((ev >= 0) & (ev <= step)).sum(axis=(0, 1))  # (positions,)
    return int(count.argmax()) if count.any() else None


def why_evicted(trace: Trace, position: int, step: int) -> EvictionReason:
    """The reason ``position`` is gone at ``step``, per layer and KV head that evicted it."""
    if not 0 <= position < trace.n_positions:
        raise ValueError(_("position {position} is outside the run (0 .. {last}).").format(
            position=position, last=trace.n_positions - 1))
    step = clamp_step(trace, step)
    ev = trace.evicted_at_step[:, :, position]  # (layers, kv_heads)
    cuts = trace.extra.get("score_cut")
    cells = []
    for layer, head in zip(*np.nonzero((ev >= 0) & (ev <= step))):
        s = int(ev[layer, head])
        score = float(trace.scores[layer, head, position])
        cut = float(cuts[s, layer, head]) if cuts is not None and s < len(cuts) else float("nan")
        cells.append(EvictionCell(int(layer), int(head), s, score if np.isfinite(score) else None, cut if np.isfinite(cut) else None))
    return EvictionReason(
        position=position,
        token=one_line(trace.tokens[position]) if position < len(trace.tokens) else "",
        step=step,
        policy=trace.policy,
        by_recency=evicts_by_recency(trace),
        cells=tuple(cells),
        n_cells=trace.n_layers * trace.n_kv_heads,
        budget=trace.budget,
        n_sink=trace.protection.n_sink,
    )
