"""Retention maps: which tokens stayed in the cache, over steps and over layers, and how full the
cache is at one step.

A map draws one column per token position up to ``MAX_COLUMNS`` positions and ``MAX_CELLS`` cells;
past that (a long prompt, or a long run on a deep model) it pools positions into at most
``POOLED_COLUMNS`` columns, about what a screen shows (``pooled_heatmap``), so its figure stays
about a megabyte however long the sequence.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from kvviz.charts.style import COLORS, KEPT_SCALE
from kvviz.charts.token_map import MAX_OWN, plotly_text, pool_starts, range_label
from kvviz.i18n import _
from kvviz.record.token_states import Scope, clamp_step, occupancy, quoted, retention, retention_by_layer
from kvviz.record.trace import Trace

# 0 = evicted (grey), partly kept (light blue), 1 = kept (blue); blank = not in the run yet
RETENTION_SCALE = KEPT_SCALE
MAX_TEXT_CELLS = 60_000
MAX_RINGS = 400  # marked columns drawn at most (wider than a screen shows apart); nearby ones merge past that
MAX_COLUMNS = 2560  # a column per position up to here (a 2k prompt and 256 generated tokens), as before
MAX_CELLS = 160_000  # ... and up to this many cells (float64 in the figure: ~1.7 MiB); a 2k prompt and 64 steps, or 64 layers
POOLED_COLUMNS = 1024  # past either: at most this many columns of pooled positions (about a pixel each)
MAX_POOLED_CELLS = 160_000  # ... fewer where there are many rows (float32: ~0.85 MiB); at least MIN_POOLED_COLUMNS
MIN_POOLED_COLUMNS = 64


def _token_labels(trace: Trace) -> list[str]:
    return [plotly_text(f"#{p} {quoted(t)}") for p, t in enumerate(trace.tokens[: trace.n_positions])]


def _mark_prompt_end(fig: go.Figure, trace: Trace, axis: str = "x", x: float | None = None) -> None:
    """A dotted line where the generated tokens start (at ``x``: a pooled map's column boundary)."""
    if trace.n_positions > trace.prompt_len:
        kw = dict(line=dict(color=COLORS["generated"], width=2, dash="dot"))
        if axis == "x":
            fig.add_vline(x=trace.prompt_len - 0.5 if x is None else x, annotation_text=_("generated →"), annotation_position="top right", **kw)


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


def _mark_positions(fig: go.Figure, marked, starts: np.ndarray | None = None) -> str:
    """Ring the columns of ``marked`` positions (search matches, the pass key) in the needle colour,
    all rings added at once (one ``add_vrect`` each is quadratic: minutes for a thousand matches);
    at most ``MAX_RINGS``, nearby matches sharing one past that. Returns a note for the title.
    ``starts``: a pooled map's column starts (``pool_starts``); the columns holding a match are ringed."""
    if starts is not None and marked:
        columns = np.searchsorted(starts, np.asarray(sorted(set(marked)), dtype=np.int64), side="right") - 1
        rings, gap = ring_runs(columns[columns >= 0])
        _add_rings(fig, rings)
        return _(" · {n} matches, those under {gap} columns apart ringed together").format(n=len(set(marked)), gap=gap) if gap else ""
    rings, gap = ring_runs(marked or ())
    _add_rings(fig, rings)
    return _(" · {n} matches, those under {gap} tokens apart ringed together").format(n=len(set(marked)), gap=gap) if gap else ""


def _add_rings(fig: go.Figure, rings: list[tuple[int, int]]) -> None:
    """Rings around columns [a, b), all added in one layout update."""
    line = dict(color=COLORS["needle"], width=3)
    shapes = [dict(type="rect", xref="x", yref="y domain", x0=a - 0.5, x1=b - 0.5, y0=0, y1=1, line=line,
                   fillcolor="rgba(0,0,0,0)", layer="above", name="marked") for a, b in rings]
    if shapes:
        fig.update_layout(shapes=[*fig.layout.shapes, *shapes])


def pooled_columns(trace: Trace, rows: int, positions: int) -> tuple[np.ndarray, int] | None:
    """How a map of ``rows`` × ``positions`` pools its positions: the columns' starts and width
    (``pool_starts``), or None when it draws a column per position (at most ``MAX_COLUMNS``
    positions and ``MAX_CELLS`` cells). Pooled: at most ``POOLED_COLUMNS`` columns and
    ``MAX_POOLED_CELLS`` cells (not under ``MIN_POOLED_COLUMNS``); position 0 and the selector's
    sink tokens (up to ``MAX_OWN``) a column each; no column across the prompt's end."""
    if positions <= MAX_COLUMNS and rows * positions <= MAX_CELLS:
        return None
    target = min(POOLED_COLUMNS, max(MIN_POOLED_COLUMNS, MAX_POOLED_CELLS // max(rows, 1)))
    own = range(max(1, min(trace.protection.n_sink, MAX_OWN)))
    starts, width = pool_starts(positions, target, own, [trace.prompt_len])
    return (starts, width) if width > 1 else None


def pool_columns(z: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(rows, positions) kept shares -> (rows, columns) float32: each column's mean over the
    positions it holds that are in the run (not NaN); NaN where none is."""
    seen = ~np.isnan(z)
    total = np.add.reduceat(np.where(seen, z, 0.0), starts, axis=1)
    count = np.add.reduceat(seen, starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def round_ticks(n: int, most: int = 9) -> np.ndarray:
    """Round positions to tick a pooled axis of ``n`` positions at: 0 and multiples of 1, 2, 2.5 or
    5 × 10^k, at most ``most`` of them."""
    raw = max(n / most, 1)
    step = next(f * 10 ** k for k in range(int(np.log10(raw)), int(np.log10(raw)) + 2) for f in (1, 2, 2.5, 5, 10) if f * 10 ** k >= raw)
    return np.arange(0, n, int(step), dtype=np.int64)


def pooled_heatmap(trace: Trace, z: np.ndarray, starts: np.ndarray, width: int, y_name: str, title: str, marked=None) -> go.Figure:
    """``_retention_heatmap`` of a long sequence: positions pooled into columns (``pooled_columns``).

    A column's colour is the share of its tokens' entries kept (``pool_columns``: the mean of the
    tokens' kept shares over the scope), on the same scale as a single token's. A mean keeps what
    the map is read for: an evicted stretch is 0 (grey) wherever it fills a column, a kept one 1,
    and a column half kept reads half, where "any kept" would paint a sparse policy's columns all
    blue (every run of 30 tokens holds a few), and "all kept" all grey. A mean drowns a lone
    token, though, and the first token is the one every policy's map is looked at for (the
    attention sink): so position 0 and the selector's sink tokens keep a column each, as wide as
    any. Columns are categories labelled with their positions ("1,025–1,056", hover: "tokens
    1,025–1,056"), ticked at round positions (on the column holding each); the title says how many
    tokens a column holds; the generated tokens start a column of their own (the dotted line
    between two columns); ``marked`` positions ring the columns holding them."""
    stops = np.append(starts[1:], z.shape[1])
    labels = [range_label(a, b - 1) for a, b in zip(starts.tolist(), stops.tolist())]
    zp = pool_columns(z, starts)
    fig = go.Figure(
        go.Heatmap(
            z=zp,
            x=labels,
            y=np.arange(z.shape[0]),
            zmin=0,
            zmax=1,
            colorscale=RETENTION_SCALE,
            hovertemplate=_("tokens {range}").format(range="%{x}") + "<br>" + y_name + " %{y}<br>"
            + _("kept: {share} (mean over these tokens)").format(share="%{z:.0%}") + "<extra></extra>",
            colorbar=dict(title=_("kept"), tickformat=".0%", len=0.8),
            ygap=0.5 if z.shape[0] <= 100 else 0,
        )
    )
    if trace.n_positions > trace.prompt_len:
        _mark_prompt_end(fig, trace, x=int(np.searchsorted(starts, trace.prompt_len)) - 0.5)
    title += _mark_positions(fig, marked, starts)
    title += "<br><sup>" + _("pooled: {n} tokens per column (the first token and the sinks: one each), coloured by the share kept, mean over the column; hover for its tokens").format(n=f"{width:,}") + "</sup>"
    ticks = round_ticks(z.shape[1])
    columns = np.searchsorted(starts, ticks, side="right") - 1  # the column holding each
    fig.update_layout(title=title, height=min(max(280, 10 * z.shape[0] + 150), 620), margin=dict(l=10, r=10, t=70, b=10))
    fig.update_xaxes(title=_("token position"), type="category", tickmode="array", tickvals=[labels[c] for c in columns],
                     ticktext=[f"{t:,}" for t in ticks.tolist()])
    fig.update_yaxes(title=y_name, autorange="reversed")
    return fig


def _retention_heatmap(trace: Trace, z: np.ndarray, y_name: str, title: str, marked=None) -> go.Figure:
    """A kept-share heatmap over token positions (x) and steps or layers (y); past ``MAX_COLUMNS``
    positions or ``MAX_CELLS`` cells, ``pooled_heatmap``."""
    pooled = pooled_columns(trace, *z.shape)
    if pooled is not None:
        return pooled_heatmap(trace, z, *pooled, y_name, title, marked)
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
