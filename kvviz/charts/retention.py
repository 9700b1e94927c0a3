"""Retention maps: which tokens stayed in the cache, over steps and over layers, and how full the
cache is at one step."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from kvviz.charts.style import COLORS, KEPT_SCALE
from kvviz.charts.token_map import plotly_text
from kvviz.i18n import _
from kvviz.record.token_states import Scope, clamp_step, occupancy, quoted, retention, retention_by_layer
from kvviz.record.trace import Trace

# 0 = evicted (grey), partly kept (light blue), 1 = kept (blue); blank = not in the run yet
RETENTION_SCALE = KEPT_SCALE
MAX_TEXT_CELLS = 60_000
MAX_RINGS = 400  # marked columns drawn at most (wider than a screen shows apart); nearby ones merge past that


def _token_labels(trace: Trace) -> list[str]:
    return [plotly_text(f"#{p} {quoted(t)}") for p, t in enumerate(trace.tokens[: trace.n_positions])]


def _mark_prompt_end(fig: go.Figure, trace: Trace, axis: str = "x") -> None:
    if trace.n_positions > trace.prompt_len:
        kw = dict(line=dict(color=COLORS["generated"], width=2, dash="dot"))
        if axis == "x":
            fig.add_vline(x=trace.prompt_len - 0.5, annotation_text=_("generated →"), annotation_position="top right", **kw)


def runs(positions) -> list[tuple[int, int]]:
    """Sorted positions as (start, stop) runs of consecutive ones."""
    out: list[tuple[int, int]] = []
    for p in sorted(set(int(p) for p in positions)):
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


def ring_runs(positions, limit: int = MAX_RINGS) -> tuple[list[tuple[int, int]], int]:
    """``runs`` of the positions, at most ``limit`` of them: past that, runs less than ``gap``
    positions apart are merged into one ring (gap doubling until they fit; 0 when none merged).
    Linear in the positions for each doubling."""
    out, gap = runs(positions), 0
    while len(out) > limit:
        gap = max(1, 2 * gap)
        merged: list[tuple[int, int]] = []
        for a, b in out:
            if merged and a - merged[-1][1] < gap:
                merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        out = merged
    return out, gap


def _mark_positions(fig: go.Figure, marked) -> str:
    """Ring the columns of ``marked`` positions (search matches, the pass key) in the needle colour,
    all rings added at once (one ``add_vrect`` each is quadratic: minutes for a thousand matches);
    at most ``MAX_RINGS``, nearby matches sharing one past that. Returns a note for the title."""
    rings, gap = ring_runs(marked or ())
    line = dict(color=COLORS["needle"], width=3)
    shapes = [dict(type="rect", xref="x", yref="y domain", x0=a - 0.5, x1=b - 0.5, y0=0, y1=1, line=line,
                   fillcolor="rgba(0,0,0,0)", layer="above", name="marked") for a, b in rings]
    if shapes:
        fig.update_layout(shapes=[*fig.layout.shapes, *shapes])
    return _(" · {n} matches, those under {gap} tokens apart ringed together").format(n=len(set(marked)), gap=gap) if gap else ""


def _retention_heatmap(trace: Trace, z: np.ndarray, y_name: str, title: str, marked=None) -> go.Figure:
    """A kept-share heatmap over token positions (x) and steps or layers (y)."""
    # the token's text in the hover costs a string per cell: only for maps of moderate size
    with_text = z.size <= MAX_TEXT_CELLS
    text = np.broadcast_to(np.array(_token_labels(trace), dtype=object), z.shape) if with_text else None
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=np.arange(z.shape[1]),
            y=np.arange(z.shape[0]),
            zmin=0,
            zmax=1,
            colorscale=RETENTION_SCALE,
            customdata=text,
            hovertemplate=("%{customdata}" if with_text else "#%{x}") + "<br>" + y_name + " %{y}<br>"
            + _("kept by {share}").format(share="%{z:.0%}") + "<extra></extra>",
            colorbar=dict(title=_("kept"), tickformat=".0%", len=0.8),
            xgap=0.5 if z.shape[1] <= 200 else 0,
            ygap=0.5 if z.shape[0] <= 100 else 0,
        )
    )
    _mark_prompt_end(fig, trace)
    title += _mark_positions(fig, marked)
    fig.update_layout(title=title, height=min(max(260, 10 * z.shape[0] + 130), 600), margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title=_("token position"))
    fig.update_yaxes(title=y_name, autorange="reversed")
    return fig


def retention_steps_figure(trace: Trace, scope: Scope = Scope(), step: int | None = None, marked=None) -> go.Figure:
    """Heatmap tokens × steps: the share of the scope holding each token after each step;
    ``marked`` positions ringed."""
    z = retention(trace, scope)  # (steps, positions)
    fig = _retention_heatmap(trace, z, _("step"), _("Kept over time: tokens × decode steps ({scope})").format(scope=scope.label()), marked)
    if step is not None:
        s = clamp_step(trace, step)
        fig.add_hline(y=s, line=dict(color=COLORS["highlight"], width=2, dash="dash"), annotation_text=_("step {step}").format(step=s), annotation_position="right")
    return fig


def retention_layers_figure(trace: Trace, step: int, head: int | None = None, marked=None) -> go.Figure:
    """Heatmap layers × tokens at ``step``: kept (one KV head) or share of the KV heads keeping it."""
    s = clamp_step(trace, step)
    z = retention_by_layer(trace, s, head)  # (layers, positions)
    what = _("KV head {head}").format(head=head) if head is not None else _("share of the {n} KV heads").format(n=trace.n_kv_heads)
    return _retention_heatmap(trace, z, _("layer"), _("Kept at step {step}: layers × tokens ({what})").format(step=s, what=what), marked)


def occupancy_figure(trace: Trace, step: int) -> go.Figure:
    """Entries held per layer at ``step`` (mean over KV heads) against a full cache."""
    s = clamp_step(trace, step)
    held, full = occupancy(trace, s)
    layers = np.arange(trace.n_layers)
    fig = go.Figure()
    fig.add_bar(
        x=layers,
        y=held,
        name=_("held (mean over KV heads)"),
        marker_color=COLORS["kept"],
        hovertemplate=_("layer {layer}<br>{n} entries held").format(layer="%{x}", n="%{y:.1f}") + "<extra></extra>",
    )
    fig.add_scatter(
        x=layers,
        y=np.full(trace.n_layers, full),
        mode="lines",
        name=_("full cache"),
        line=dict(color=COLORS["full"], dash="dash"),
        hovertemplate=_("full cache: {n} entries").format(n=full) + "<extra></extra>",
    )
    budgets = [b for b in (trace.layer_budgets or []) if b is not None]
    if budgets and len(set(budgets)) > 1:
        fig.add_scatter(
            x=layers,
            y=trace.layer_budgets,
            mode="markers",
            name=_("layer budget"),
            marker=dict(symbol="line-ew-open", size=14, color=COLORS["highlight"]),
        )
    mean_held = float(held.mean()) if held.size else 0.0
    pct = 100 * mean_held / full if full else 0.0
    fig.update_layout(
        title=_("Cache occupancy at step {step}: {held} of {full} entries per KV head ({pct}%)").format(
            step=s, held=f"{mean_held:.1f}", full=full, pct=f"{pct:.0f}"),
        height=300,
        margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
        bargap=0.15,
    )
    fig.update_xaxes(title=_("layer"), dtick=1 if trace.n_layers <= 32 else None)
    fig.update_yaxes(title=_("entries"), range=[0, full * 1.08 if full else 1])
    return fig
