"""Token states as colours: the palette every token view shares, and a token map figure.

The map lays the tokens out like text, ``per_row`` to a row, one square per token coloured by its
state, with the token's details on hover; it gives the overview of a long prompt that the text
view cannot. Past ``MAX_TOKENS`` tokens (more than a screen shows apart) it pools them: one marker
per run of consecutive tokens, at most about ``MAX_MARKERS`` of them, and says so in its title
(``token_states_figure``).

``pool_starts`` and ``range_label`` cut positions into such runs; the retention maps
(``kvviz.charts.retention``) pool their columns with them too.
"""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go

from kvviz.charts.style import COLORS, STATE_FILL, STATE_SYMBOL, STATE_TEXT
from kvviz.i18n import _
from kvviz.record.token_states import STATES, TokenRecord, quoted

# background, text colour per state: the palette of kvviz.charts.style
STATE_COLORS: dict[str, str] = {s: STATE_FILL[s] for s in STATES}
STATE_TEXT_COLORS: dict[str, str] = {s: STATE_TEXT[s] for s in STATES}

MAX_TOKENS = 2560  # drawn one marker each up to here: a 2k prompt and 256 generated tokens, as before
MAX_MARKERS = 1600  # pooled past MAX_TOKENS: 40 rows of 40 markers at most (the height's cap, 900 px, shows ~43)
MAX_OWN = 16  # leading sink tokens that keep a marker (a column) of their own when pooled
# the token states in four groups, in the order a tie goes: in the cache, partly, out of it, not yet in
STATE_GROUPS: dict[str, tuple[str, ...]] = {
    "in": ("sink", "recent", "high_score", "kept", "read"),
    "partial": ("partial",),
    "out": ("evicted_now", "evicted"),
    "later": ("next", "pending"),
}


def plotly_text(text: str) -> str:
    """Plain text for a plotly label or hover: plotly reads a few HTML tags in text, so escape
    it and turn newlines into ``<br>``."""
    return html.escape(text, quote=False).replace("\n", "<br>")


def state_label(state: str) -> str:
    return _(STATES[state][0])  # N_-marked in kvviz.record.token_states


def describe_record(r: TokenRecord, step: int) -> str:
    """The hover text of one token, plain text (escape it before it goes into HTML)."""
    text = quoted(r.text) if r.text else _("(a byte piece of the character the next token completes)")
    lines = [f"#{r.position} {text}" + (_("  (generated)") if r.generated else _("  (prompt)"))]
    lines.append(_("state: {state}").format(state=state_label(r.state)))
    lines.append(_("score: {score}").format(score=_("not scored") if r.score is None else f"{r.score:.4g}"))
    if r.evicted_at_step is None:
        lines.append(_("never evicted"))
    elif r.evicted_at_step > step:
        lines.append(_("first evicted at step {step} (later)").format(step=r.evicted_at_step))
    else:
        lines.append(_("first evicted at step {step} (at or before this step)").format(step=r.evicted_at_step))
    if r.state not in ("next", "pending"):
        lines.append(_("kept by {share} of the layers × KV heads in view at step {step}").format(share=f"{r.kept_share:.0%}", step=step))
    return "\n".join(lines)


def pool_starts(n: int, target: int, own=(), breaks=()) -> tuple[np.ndarray, int]:
    """Positions ``0..n-1`` cut into at most ``target`` runs of consecutive positions: their starts
    (ascending, the first 0) and the width of a run. Each position of ``own`` is a run of its own;
    no run crosses a position of ``breaks`` (one starts there); between those cuts, runs of
    ``width`` positions (the last one of a stretch shorter). ``width`` is the smallest that fits
    ``target`` runs (1: a run per position, when ``n <= target``)."""
    own = {int(o) for o in own if 0 <= o < n}
    cuts = sorted({0, n} | own | {o + 1 for o in own} | {int(b) for b in breaks if 0 < b < n})
    stretches = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    free = sum(b - a for a, b in stretches if not (b - a == 1 and a in own))
    # each stretch adds at most one short run: leave room for them
    width = max(1, math.ceil(free / max(1, target - len(stretches)))) if n > target else 1
    starts = np.concatenate([np.arange(a, b, width) for a, b in stretches]) if stretches else np.zeros(0, int)
    return starts.astype(np.int64), width


def range_label(a: int, b: int) -> str:
    """Positions ``a`` to ``b`` (inclusive) as a label: ``"7"`` or ``"1,025–1,056"``."""
    return f"{a:,}" if a == b else f"{a:,}–{b:,}"


def token_states_figure(
    records: list[TokenRecord], step: int, per_row: int = 40, title: str | None = None, marked: list[int] | None = None,
    marked_name: str | None = None,
) -> go.Figure:
    """One square per token, coloured by state (and shaped, outlined: ``STATE_SYMBOL``), one legend
    entry per state present; positions in
    ``marked`` (search matches, the pass key) ringed in the needle colour.

    Past ``MAX_TOKENS`` records, ``pooled_token_states_figure``: one marker per run of tokens."""
    if len(records) > MAX_TOKENS:
        return pooled_token_states_figure(records, step, per_row, title, marked, marked_name)
    fig = go.Figure()
    by_state: dict[str, list[TokenRecord]] = {}
    for r in records:
        by_state.setdefault(r.state, []).append(r)
    for state in STATES:
        rs = by_state.get(state)
        if not rs:
            continue
        fig.add_trace(
            go.Scatter(
                x=[r.position % per_row for r in rs],
                y=[r.position // per_row for r in rs],
                mode="markers",
                name=f"{state_label(state)} ({len(rs)})",
                legendgroup=state,
                marker=dict(size=13, color=STATE_COLORS[state], **STATE_SYMBOL[state]),  # shape and outline, not hue alone
                hovertext=[plotly_text(describe_record(r, step)) for r in rs],
                hoverinfo="text",
                meta=state,
            )
        )
    if marked:
        fig.add_trace(
            go.Scatter(
                x=[p % per_row for p in marked], y=[p // per_row for p in marked], mode="markers", name=(marked_name or _("match")) + f" ({len(marked)})",
                marker=dict(symbol="square-open", size=19, color=COLORS["needle"], line=dict(width=3)), hoverinfo="skip", meta="marked",
            )
        )
    rows = (len(records) + per_row - 1) // per_row if records else 1
    fig.update_layout(
        title=title,
        height=min(120 + 18 * rows, 900),
        margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
        plot_bgcolor="rgba(0,0,0,0)",
    )
    fig.update_xaxes(visible=False, range=[-1, per_row])
    fig.update_yaxes(visible=False, autorange="reversed")
    return fig


def _unit_states(states: np.ndarray, unit: np.ndarray, n_units: int) -> tuple[np.ndarray, np.ndarray]:
    """For tokens' state indices (into ``STATES``) and the unit (run) each falls in: the tokens per
    state of each unit (units × states), and each unit's state index: the group (``STATE_GROUPS``)
    most of its tokens are in, then the commonest state of that group (ties: the earlier group,
    the earlier state in ``STATES``)."""
    names = list(STATES)
    counts = np.bincount(unit * len(names) + states, minlength=n_units * len(names)).reshape(n_units, len(names))
    member = np.zeros((len(names), len(STATE_GROUPS)), dtype=np.int64)  # state -> its group
    for g, group in enumerate(STATE_GROUPS.values()):
        member[[names.index(s) for s in group], g] = 1
    group = (counts @ member).argmax(axis=1)  # argmax: the first of equal counts
    in_group = member[:, group].T.astype(bool)  # units × states: the states of the unit's group
    return counts, np.where(in_group, counts, -1).argmax(axis=1)


def pooled_token_states_figure(
    records: list[TokenRecord], step: int, per_row: int = 40, title: str | None = None, marked: list[int] | None = None,
    marked_name: str | None = None,
) -> go.Figure:
    """The token map of a long sequence: consecutive tokens pooled into at most about
    ``MAX_MARKERS`` markers (``pool_starts``), laid out like the tokens, ``per_row`` to a row, in the
    colours and shapes of single tokens (``STATE_FILL``, ``STATE_SYMBOL``: one state, one look).

    A marker stands for its tokens' state, chosen in two steps: whether most of them are in the
    cache, partly, out of it or not yet in (``STATE_GROUPS``), then the commonest state in that
    group. So a stretch mostly evicted shows evicted, and a run mostly held shows held even where
    its held tokens are held for different reasons (a plain plurality of states would call 12
    evicted against 10 kept and 10 high-score tokens evicted). Rare tokens would vanish in a
    majority, so the first token, the leading sink tokens (up to ``MAX_OWN``) and the next token
    keep a marker each, with their single-token hover. A run never mixes prompt and generated
    tokens. Hover: the run's positions and its tokens per state; the legend counts tokens, as
    unpooled (a state no marker takes is listed, not drawn); the title says how many tokens a
    marker holds. ``marked`` positions: the markers holding them are ringed. Records are taken in
    their order, the positions of a run being its first and last record's."""
    names = list(STATES)
    n = len(records)
    states = np.fromiter((names.index(r.state) for r in records), dtype=np.int64, count=n)
    own = [0] + [i for i in np.flatnonzero(states == names.index("sink"))[:MAX_OWN]] + list(np.flatnonzero(states == names.index("next")))
    generated = np.fromiter((r.generated for r in records), dtype=bool, count=n)
    breaks = np.flatnonzero(generated[1:] != generated[:-1]) + 1
    starts, width = pool_starts(n, MAX_MARKERS, own, breaks)
    stops = np.append(starts[1:], n)
    unit = np.repeat(np.arange(starts.size), stops - starts)
    counts, unit_state = _unit_states(states, unit, starts.size)
    state_hover = _("{state}: {n}")
    hover = []
    for u, (a, b) in enumerate(zip(starts.tolist(), stops.tolist())):
        if b - a == 1:
            hover.append(plotly_text(describe_record(records[a], step)))
            continue
        first, last = records[a], records[b - 1]
        lines = [_("tokens {first}–{last}").format(first=f"{first.position:,}", last=f"{last.position:,}")
                 + (_("  (generated)") if first.generated else _("  (prompt)"))]
        lines += [state_hover.format(state=state_label(names[k]), n=f"{c:,}") for k, c in enumerate(counts[u].tolist()) if c]
        hover.append(plotly_text("\n".join(lines)))
    total = np.bincount(states, minlength=len(names))
    ux, uy = np.arange(starts.size) % per_row, np.arange(starts.size) // per_row
    fig = go.Figure()
    for k, state in enumerate(names):
        if not total[k]:
            continue
        us = np.flatnonzero(unit_state == k)
        fig.add_trace(
            go.Scatter(
                x=ux[us].tolist() or [None],  # [None]: no marker takes the state, the legend still lists it
                y=uy[us].tolist() or [None],
                mode="markers",
                name=f"{state_label(state)} ({int(total[k])})",
                legendgroup=state,
                marker=dict(size=13, color=STATE_COLORS[state], **STATE_SYMBOL[state]),
                customdata=[[records[a].position, records[b - 1].position] for a, b in zip(starts[us].tolist(), stops[us].tolist())] or None,
                hovertext=[hover[u] for u in us.tolist()] or None,
                hoverinfo="text",
                meta=state,
            )
        )
    if marked:
        index = {r.position: i for i, r in enumerate(records)}
        at = np.array(sorted({index[p] for p in marked if p in index}), dtype=np.int64)
        hit = np.unique(np.searchsorted(starts, at, side="right") - 1)
        fig.add_trace(
            go.Scatter(
                x=ux[hit].tolist(), y=uy[hit].tolist(), mode="markers", name=(marked_name or _("match")) + f" ({len(marked)})",
                marker=dict(symbol="square-open", size=19, color=COLORS["needle"], line=dict(width=3)), hoverinfo="skip", meta="marked",
            )
        )
    note = _("Token map: {n} tokens per marker").format(n=f"{width:,}") + "<br><sup>" + _(
        "a marker shows its tokens' commonest state, in the cache or not decided first; the first token, "
        "the sinks and the next token have their own · hover for the counts") + "</sup>"
    rows = (starts.size + per_row - 1) // per_row
    fig.update_layout(
        title=f"{title} · {note}" if title else note,  # two lines, centred in the top margin, over the legend
        height=min(170 + 18 * rows, 900),
        margin=dict(l=10, r=10, t=110, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
        plot_bgcolor="rgba(0,0,0,0)",
    )
    fig.update_xaxes(visible=False, range=[-1, per_row])
    fig.update_yaxes(visible=False, autorange="reversed")
    return fig
