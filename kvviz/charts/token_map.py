"""Token states as colours: the palette every token view shares, and a token map figure.

The map lays the tokens out like text, ``per_row`` to a row, one square per token coloured by its
state, with the token's details on hover; it gives the overview of a long prompt that the text
view cannot.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go

from kvviz.charts.style import COLORS, STATE_FILL, STATE_SYMBOL, STATE_TEXT
from kvviz.i18n import _
from kvviz.record.token_states import STATES, TokenRecord, quoted

# background, text colour per state: the palette of kvviz.charts.style
STATE_COLORS: dict[str, str] = {s: STATE_FILL[s] for s in STATES}
STATE_TEXT_COLORS: dict[str, str] = {s: STATE_TEXT[s] for s in STATES}


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


def token_states_figure(
    records: list[TokenRecord], step: int, per_row: int = 40, title: str | None = None, marked: list[int] | None = None,
    marked_name: str | None = None,
) -> go.Figure:
    """One square per token, coloured by state (and shaped, outlined: ``STATE_SYMBOL``), one legend
    entry per state present; positions in
    ``marked`` (search matches, the pass key) ringed in the needle colour."""
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
