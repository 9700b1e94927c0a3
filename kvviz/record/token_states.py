"""What each token is, in the cache, at one step of a run: the data behind the token view.

For a Trace, a decode step and a scope (one layer and KV head, one layer, or everything), every
position gets a ``TokenRecord``: its text, its state, the score that decided it, the step it was
evicted at and the share of the scope's layers × KV heads still holding it.

States, in the order a legend lists them:

  sink          kept; one of the first tokens the policy always keeps (attention sinks)
  recent        kept; inside the policy's window of most recent tokens
  high_score    kept; among the highest-scoring entries the policy kept (top ``HIGH_SCORE_SHARE``)
  kept          kept, for any other reason (or the policy keeps everything)
  read          kept, and read by this step's attention in every layer/KV head of the scope that
                holds it (a retrieval policy picks what each step reads; the others are kept unread)
  partial       only with a scope of several layers/heads: kept by some, evicted by others
  evicted_now   evicted at exactly this step
  evicted       evicted at an earlier step
  next          the token generated at this step (it enters the cache at the next step)
  pending       generated later; not part of the run yet at this step

"Sink" and "recent" are what the run's selector declared it always keeps (``trace.protection``,
see ``Selector.protection``); a policy that protects nothing has no sink or recent tokens. A
selector that only acts at prefill (SnapKV) protects the window at the end of the prompt, not
the newest tokens.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np

from kvviz.i18n import N_, _
from kvviz.record.trace import Trace

STATES: dict[str, tuple[str, str]] = {
    "sink": (N_("sink"), N_("kept: one of the first tokens the policy always keeps (attention sinks)")),
    "recent": (N_("recent window"), N_("kept: inside the policy's window of most recent tokens")),
    "high_score": (N_("high score"), N_("kept: among the highest-scoring entries the policy kept")),
    "kept": (N_("kept"), N_("in the cache at this step")),
    "read": (N_("read this step"), N_("kept, and read by this step's attention (a retrieval policy's choice)")),
    "partial": (N_("partly kept"), N_("kept by some of the layers/KV heads, evicted by the others")),
    "evicted_now": (N_("evicted at this step"), N_("left the cache at this step")),
    "evicted": (N_("evicted"), N_("left the cache at an earlier step")),
    "next": (N_("next token"), N_("generated at this step; enters the cache at the next step")),
    "pending": (N_("not yet generated"), N_("generated after this step")),
}

HIGH_SCORE_SHARE = 0.2  # the top fifth of the scored, unprotected kept entries are "high score"


@dataclass(frozen=True)
class Scope:
    """Which part of the cache a view looks at: ``None`` means all layers (resp. KV heads)."""

    layer: int | None = None
    head: int | None = None

    def label(self) -> str:
        if self.layer is None and self.head is None:
            return _("all layers and KV heads")
        layer = _("all layers") if self.layer is None else _("layer {layer}").format(layer=self.layer)
        head = _("all KV heads") if self.head is None else _("KV head {head}").format(head=self.head)
        return _("{layer}, {head}").format(layer=layer, head=head)


@dataclass(frozen=True)
class TokenRecord:
    position: int
    text: str  # the token as decoded, untrusted: escape it wherever it becomes HTML
    state: str  # a key of STATES
    score: float | None  # the last score that decided (mean over the scope); None = never scored
    evicted_at_step: int | None  # first step at which the scope evicted it (may be after the viewed step)
    kept_share: float  # share of the scope's layers × KV heads holding it at the viewed step
    generated: bool  # part of the model's output (not the prompt)


def clamp_step(trace: Trace, step: int) -> int:
    return int(min(max(step, 0), max(trace.n_steps - 1, 0)))


def _scoped(trace: Trace, arr: np.ndarray, scope: Scope) -> np.ndarray:
    """(layers, kv_heads, positions) -> (cells, positions) restricted to the scope."""
    if scope.layer is not None:
        arr = arr[scope.layer : scope.layer + 1]
    if scope.head is not None:
        arr = arr[:, scope.head : scope.head + 1]
    return arr.reshape(-1, arr.shape[-1])


def check_scope(trace: Trace, scope: Scope) -> None:
    if scope.layer is not None and not 0 <= scope.layer < trace.n_layers:
        raise ValueError(f"layer {scope.layer} is out of range (the model has {trace.n_layers} layers).")
    if scope.head is not None and not 0 <= scope.head < trace.n_kv_heads:
        raise ValueError(f"KV head {scope.head} is out of range (the model has {trace.n_kv_heads} KV heads).")


def token_records(trace: Trace, step: int, scope: Scope = Scope()) -> list[TokenRecord]:
    """One record per position (prompt then generated) at ``step`` for ``scope``."""
    check_scope(trace, scope)
    step = clamp_step(trace, step)
    n = trace.n_positions
    ev = _scoped(trace, trace.evicted_at_step, scope)  # (cells, positions)
    entered = trace.entered_at_step()
    present = (entered <= step) & ((ev == -1) | (ev > step))  # (cells, positions)
    share = present.mean(axis=0)
    scores = _scoped(trace, trace.scores, scope)
    with np.errstate(all="ignore"):
        finite = np.isfinite(scores)
        score = np.where(finite.any(axis=0), np.nansum(np.where(finite, scores, 0), axis=0) / np.maximum(finite.sum(axis=0), 1), np.nan)
    evicted_any = np.where(ev >= 0, ev, np.iinfo(np.int32).max).min(axis=0)
    last_holder_left = ev.max(axis=0)  # when every cell has evicted it, the step the last one did

    prot = trace.protection
    seq_len = trace.prompt_len + step  # tokens in the cache of a full run at this step
    pos = np.arange(n)
    sink = pos < prot.n_sink
    window_end = trace.prompt_len if prot.anchored_at_prompt else seq_len
    recent = (pos >= window_end - prot.recent) & (pos < window_end) if prot.recent else np.zeros(n, bool)
    kept_all = share >= 1.0
    candidates = kept_all & ~sink & ~recent & np.isfinite(score) & (entered <= step)
    high = np.zeros(n, bool)
    if candidates.any() and (~kept_all[entered <= step]).any():  # only meaningful when something was evicted
        idx = np.flatnonzero(candidates)
        k = max(1, int(round(HIGH_SCORE_SHARE * idx.size)))
        high[idx[np.argsort(-score[idx], kind="stable")[:k]]] = True

    read = np.zeros(n, bool)
    if trace.read_mask is not None and step > 0:  # a retriever's choice (the prefill reads everything)
        read_cells = _scoped(trace, trace.read_mask[step], scope)  # (cells, positions)
        read = np.where(present, read_cells, True).all(axis=0) & present.any(axis=0)

    records = []
    for p in range(n):
        if entered[p] > step:
            state = "next" if p == trace.prompt_len + step else "pending"
        elif kept_all[p] and read[p]:
            state = "read"
        elif kept_all[p]:
            state = "sink" if sink[p] else "recent" if recent[p] else "high_score" if high[p] else "kept"
        elif share[p] > 0:
            state = "partial"
        else:
            state = "evicted_now" if last_holder_left[p] == step else "evicted"
        records.append(
            TokenRecord(
                position=p,
                text=trace.tokens[p] if p < len(trace.tokens) else "",
                state=state,
                score=None if not np.isfinite(score[p]) else float(score[p]),
                evicted_at_step=None if evicted_any[p] == np.iinfo(np.int32).max else int(evicted_any[p]),
                kept_share=float(share[p]) if entered[p] <= step else 0.0,
                generated=p >= trace.prompt_len,
            )
        )
    return records


def state_counts(records: list[TokenRecord]) -> dict[str, int]:
    """How many tokens are in each state, in the order of STATES (states with none left out)."""
    counts = {s: 0 for s in STATES}
    for r in records:
        counts[r.state] += 1
    return {s: c for s, c in counts.items() if c}


def retention(trace: Trace, scope: Scope = Scope()) -> np.ndarray:
    """(steps, positions) float: share of the scope holding each position at each step; NaN
    before the position entered the cache."""
    check_scope(trace, scope)
    ev = _scoped(trace, trace.evicted_at_step, scope)  # (cells, positions)
    steps = np.arange(max(trace.n_steps, 1))[:, None, None]
    entered = trace.entered_at_step()
    present = (entered[None, None, :] <= steps) & ((ev[None] == -1) | (ev[None] > steps))
    out = present.mean(axis=1)
    return np.where(entered[None, :] <= steps[:, 0], out, np.nan)


def retention_by_layer(trace: Trace, step: int, head: int | None = None) -> np.ndarray:
    """(layers, positions) float at ``step``: share of KV heads (or the one ``head``) holding each
    position; NaN for positions not in the run yet."""
    step = clamp_step(trace, step)
    ev = trace.evicted_at_step if head is None else trace.evicted_at_step[:, head : head + 1]
    entered = trace.entered_at_step()
    present = (entered <= step) & ((ev == -1) | (ev > step))  # (layers, heads, positions)
    return np.where(entered[None, :] <= step, present.mean(axis=1), np.nan)


def occupancy(trace: Trace, step: int) -> tuple[np.ndarray, int]:
    """Entries held per layer at ``step`` (mean over KV heads), and what a full cache would hold."""
    step = clamp_step(trace, step)
    entered = trace.entered_at_step()
    ev = trace.evicted_at_step
    present = (entered <= step) & ((ev == -1) | (ev > step))
    return present.sum(axis=-1).mean(axis=-1), int((entered <= step).sum())


def newest_held_share(trace: Trace, step: int, tail: int) -> np.ndarray:
    """(positions,) float at ``step``: share of layers × KV heads in which the position is among
    the ``tail`` newest entries held (e.g. a quantizing store's full-precision residual window);
    NaN where no layer or head holds the position."""
    step = clamp_step(trace, step)
    ev = trace.evicted_at_step
    present = (trace.entered_at_step() <= step) & ((ev == -1) | (ev > step))  # (layers, heads, positions)
    newer_or_same = np.cumsum(present[..., ::-1], axis=-1)[..., ::-1]  # held entries at positions >= p
    in_tail = present & (newer_or_same <= tail)
    share = in_tail.reshape(-1, trace.n_positions).mean(axis=0)
    return np.where(present.reshape(-1, trace.n_positions).any(axis=0), share, np.nan)


def visible_text(text: str) -> str:
    """The text with control and invisible characters made visible: a newline becomes ``↵``
    followed by a line break, a tab ``⇥``, other control and format characters ``\\xNN`` or
    ``\\uNNNN``. Still to be HTML-escaped."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("↵\n")
        elif ch == "\t":
            out.append("⇥")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def one_line(text: str) -> str:
    """``visible_text`` without the line breaks, for tooltips and labels."""
    return visible_text(text).replace("\n", "")


def quoted(text: str) -> str:
    """A token for a label: ``one_line`` in typographic quotes (still to be escaped)."""
    return f"“{one_line(text)}”"
