"""Figures of one head of one layer in detail: the (pooled) attention matrix with its key scores
and row entropies, the CSV of the matrix in view, and the attention lost to evicted keys per
decode step (the tokens tinted by attention are drawn by ``kvviz.ui.token_html``).

Pure builders: attention maps in (``kvviz.attention.maps``), plotly figures, HTML or text out. Text
from prompts and model output is escaped wherever plotly or HTML would read it.
"""

from __future__ import annotations

import csv
import html
import io
import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvviz.attention.data import AttentionView
from kvviz.charts._attention_common import COLORSCALE, HIGHLIGHT, MASK_COLOR, _color_range, _colorbar, color_values, pool_name
from kvviz.charts.style import COLORS, EVICTED_SCALE
from kvviz.i18n import _
from kvviz.record.token_states import one_line

EVICTED_COLORSCALE = EVICTED_SCALE
EVICTED_BAR = COLORS["evicted"]
EVICTED_TILE_SHARE = 0.5  # a tile column is drawn as evicted when at least this share of its keys is


# ---------------------------------------------------------------------------------------------
# small helpers


def token_label(position: int, text: str, width: int = 14) -> str:
    """A unique, plotly-safe label of one token: ``"37 ␣the"``."""
    shown = one_line(text).replace(" ", "␣")
    if len(shown) > width:
        shown = shown[: width - 1] + "…"
    return html.escape(f"{position} {shown}", quote=False)


def range_label(start: int, stop: int) -> str:
    """Label of a tile of positions start..stop-1."""
    return f"{start}" if stop - start == 1 else f"{start}–{stop - 1}"


def axis_labels(starts: np.ndarray, tile: int, stop: int, tokens: list[str] | None) -> list[str]:
    """One label per tile: the token at full resolution, the position range when pooled."""
    if tile == 1 and tokens is not None:
        return [token_label(int(s), tokens[int(s)] if int(s) < len(tokens) else "") for s in starts]
    return [range_label(int(s), min(int(s) + tile, stop)) for s in starts]


def pool_positions(values: np.ndarray, start: int, stop: int, tile: int, pool: str) -> np.ndarray:
    """Pool a per-position array over tiles of ``tile`` positions of start..stop (max or mean)."""
    seg = np.asarray(values, dtype=np.float64)[start:stop]
    n = math.ceil(len(seg) / tile)
    out = np.empty(n)
    for i in range(n):
        part = seg[i * tile : (i + 1) * tile]
        out[i] = part.max() if pool == "max" else part.mean()
    return out


def evicted_share(evicted: np.ndarray | None, start: int, stop: int, tile: int) -> np.ndarray | None:
    """Share of evicted keys in each tile column of start..stop, or None without a mask."""
    if evicted is None:
        return None
    return pool_positions(np.asarray(evicted, dtype=np.float64), start, stop, tile, "mean")


def masked_tiles(view: AttentionView) -> np.ndarray:
    """(n_rows, n_cols) bool: tiles whose every key lies after every query (the causal mask)."""
    last_query = np.minimum(view.row_starts + view.tile, view.q_stop) - 1
    return view.col_starts[None, :] > last_query[:, None]


# ---------------------------------------------------------------------------------------------
# one head in detail


def detail_figure(
    view: AttentionView,
    tokens: list[str] | None = None,
    *,
    selected_token: int | None = None,
    scale: str = "log",
    height: int = 640,
    title: str | None = None,
) -> go.Figure:
    """The heatmap of ``view`` (queries down, keys across) with the causal mask in grey, evicted
    keys in greys, beside it the entropy of each query row and under it the attention each key
    receives from all queries (the H2O score); the selected token's row and column outlined.

    The column bars carry customdata = first key position of the tile: with
    ``st.plotly_chart(on_select="rerun")`` clicking a bar selects that token.
    """
    R, C = view.values.shape
    xl = axis_labels(view.col_starts, view.tile, view.k_stop, tokens)
    yl = axis_labels(view.row_starts, view.tile, view.q_stop, tokens)
    share = evicted_share(view.evicted, view.k_start, view.k_stop, view.tile)
    evicted_cols = np.zeros(C, dtype=bool) if share is None else share >= EVICTED_TILE_SHARE
    mask = masked_tiles(view)
    raw = view.values.astype(np.float64)
    shown = np.where(evicted_cols[None, :], np.nan, raw)
    greyed = np.where(evicted_cols[None, :], raw, np.nan)
    zmin, zmax = _color_range(scale)

    fig = make_subplots(
        rows=2, cols=2, shared_xaxes=True, shared_yaxes=True, column_widths=[0.86, 0.14],
        row_heights=[0.82, 0.18], horizontal_spacing=0.012, vertical_spacing=0.02,
    )
    what = _("attention") if view.tile == 1 else _("{pool} attention").format(pool=pool_name(view.pool))
    hover = _("query {query}<br>key {key}<br>{what} {value}").format(query="%{y}", key="%{x}", what=what, value="%{customdata:.4g}")
    fig.add_trace(
        go.Heatmap(
            x=xl, y=yl, z=color_values(shown, scale), customdata=shown, zmin=zmin, zmax=zmax,
            colorscale=COLORSCALE, colorbar=_colorbar(scale, _("attention") if view.tile == 1 else _("{pool}<br>attention").format(pool=pool_name(view.pool)))
            | dict(len=0.8, y=0.6),
            hovertemplate=hover + "<extra></extra>", name=_("attention"),
        ),
        row=1, col=1,
    )
    if evicted_cols.any():
        fig.add_trace(
            go.Heatmap(
                x=xl, y=yl, z=color_values(greyed, scale), customdata=greyed, zmin=zmin, zmax=zmax,
                colorscale=EVICTED_COLORSCALE, showscale=False, name=_("evicted keys"),
                hovertemplate=hover + _("<br><b>evicted by the policy</b>") + "<extra></extra>",
            ),
            row=1, col=1,
        )
    if mask.any():
        fig.add_trace(
            go.Heatmap(
                x=xl, y=yl, z=np.where(mask, 1.0, np.nan), colorscale=[[0, MASK_COLOR], [1, MASK_COLOR]],
                showscale=False, name=_("causal mask"),
                hovertemplate=_("query {query}<br>key {key}<br>masked: the key comes after the query").format(query="%{y}", key="%{x}")
                + "<extra></extra>",
            ),
            row=1, col=1,
        )

    # the attention each key receives (H2O score) and the entropy of each query row
    key_score = pool_positions(view.key_score, view.k_start, view.k_stop, view.tile, view.pool)
    bar_colors = np.where(evicted_cols, EVICTED_BAR, COLORS["kept"]).tolist()
    fig.add_trace(
        go.Bar(
            x=xl, y=key_score, marker=dict(color=bar_colors, pattern=dict(shape=["/" if e else "" for e in evicted_cols])),
            customdata=view.col_starts.tolist(), name=_("key score"),
            hovertemplate=_("key {key}<br>attention received {value}").format(key="%{x}", value="%{y:.3g}") + "<extra></extra>",
            showlegend=False,
        ),
        row=2, col=1,
    )
    entropy = pool_positions(view.row_entropy, view.q_start, view.q_stop, view.tile, view.pool)
    fig.add_trace(
        go.Bar(
            y=yl, x=entropy, orientation="h", marker=dict(color=COLORS["measure"]), customdata=view.row_starts.tolist(),
            name=_("row entropy"), hovertemplate=_("query {query}<br>entropy {value} nats").format(query="%{y}", value="%{x:.3g}")
            + "<extra></extra>", showlegend=False,
        ),
        row=1, col=2,
    )

    # the prompt / generated boundary
    p = view.prompt_len
    if view.k_start < p < view.k_stop:
        x = (p - view.k_start) / view.tile - 0.5
        fig.add_vline(x=x, line=dict(color=COLORS["generated"], dash="dash", width=1.5), row=1, col=1)
    if view.q_start < p < view.q_stop:
        y = (p - view.q_start) / view.tile - 0.5
        fig.add_hline(y=y, line=dict(color=COLORS["generated"], dash="dash", width=1.5), row=1, col=1)
        fig.add_annotation(
            x=0, y=y, xref="x", yref="y", text=_("generated ↓"), showarrow=False, xanchor="left", yanchor="top",
            font=dict(color=COLORS["generated"], size=11),
        )

    # the selected token: its row and its column
    if selected_token is not None:
        t = int(selected_token)
        if view.q_start <= t < view.q_stop:
            r = (t - view.q_start) // view.tile
            fig.add_shape(
                type="rect", x0=-0.5, x1=C - 0.5, y0=r - 0.5, y1=r + 0.5, line=dict(color=HIGHLIGHT, width=2),
                xref="x", yref="y", name="selected row",
            )
        if view.k_start <= t < view.k_stop:
            c = (t - view.k_start) // view.tile
            fig.add_shape(
                type="rect", x0=c - 0.5, x1=c + 0.5, y0=-0.5, y1=R - 0.5, line=dict(color=HIGHLIGHT, width=2),
                xref="x", yref="y", name="selected column",
            )

    n_ticks = 40
    fig.update_xaxes(type="category", showgrid=False, tickangle=-60, nticks=n_ticks, row=2, col=1, title=_("key"))
    fig.update_xaxes(type="category", showgrid=False, row=1, col=1)
    fig.update_xaxes(showgrid=True, row=1, col=2, title=_("entropy"), side="top")
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False, nticks=n_ticks, row=1, col=1, title=_("query"))
    fig.update_yaxes(title=_("received"), type="log" if scale == "log" else "linear", row=2, col=1)
    if title is None:
        res = _("full resolution") if view.tile == 1 else _("{tile}×{tile} tokens per tile, {pool}").format(tile=view.tile, pool=pool_name(view.pool))
        title = _("layer {layer} · head {head} (KV head {kv_head}) · queries {q_first}–{q_last} × keys {k_first}–{k_last} · {resolution}").format(
            layer=view.layer, head=view.head, kv_head=view.kv_head, q_first=view.q_start, q_last=view.q_stop - 1,
            k_first=view.k_start, k_last=view.k_stop - 1, resolution=res,
        )
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white", bargap=0.05,
        title=dict(text=html.escape(title, quote=False), font=dict(size=13)), clickmode="event+select",
        hovermode="closest", dragmode="zoom",
    )
    return fig


# ---------------------------------------------------------------------------------------------
# the matrix as CSV, and the attention lost to eviction


def view_csv(view: AttentionView, tokens: list[str] | None = None) -> str:
    """The matrix in view as CSV: a header of key labels, one row per query (tile), empty cells
    where masked. Labels are plain text (not HTML-escaped)."""
    def labels(starts, stop):
        if view.tile == 1 and tokens is not None:
            return [f"{int(s)} {one_line(tokens[int(s)])}" for s in starts]
        return [range_label(int(s), min(int(s) + view.tile, stop)) for s in starts]

    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["query \\ key"] + labels(view.col_starts, view.k_stop))
    for label, row in zip(labels(view.row_starts, view.q_stop), view.values):
        w.writerow([label] + ["" if np.isnan(v) else f"{v:.6g}" for v in row])
    return out.getvalue()


def lost_mass_figure(lost: np.ndarray, step: int | None = None) -> go.Figure:
    """Per decode step, the attention the step's query put on the entries the policy evicted at
    that step (``Trace.lost_mass`` of one layer), the step in view in the highlight colour."""
    lost = np.asarray(lost, dtype=np.float64)
    colors = [COLORS["highlight"] if s == step else COLORS["evicted_now"] for s in range(len(lost))]
    fig = go.Figure(
        go.Bar(
            x=list(range(len(lost))), y=lost, marker=dict(color=colors), name=_("attention lost to eviction"),
            hovertemplate=_("step {step}<br>{share} of the step's attention was on the entries evicted at that step").format(
                step="%{x}", share="%{y:.1%}") + "<extra></extra>",
        )
    )
    fig.update_xaxes(title=_("step"))
    fig.update_yaxes(title=_("lost"), tickformat=".0%", rangemode="tozero")
    fig.update_layout(height=170, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor="white", bargap=0.15)
    return fig
