"""Figures of attention: the overview grid of every layer and head, one head in detail, head
profiles, the tokens coloured by attention, and the CSV of the matrix in view.

Pure builders: capture results in (``kvviz.capture``), plotly figures, HTML or text out. Text from
prompts and model output is escaped wherever plotly or HTML would read it.

Colour: attention is shown on a log10 scale by default (weights span five orders of magnitude
at long contexts); ``scale="linear"`` shows it as is. Cells a query cannot see (keys after it)
are drawn in a light grey "causal mask" trace; evicted keys in greys instead of colour.
"""

from __future__ import annotations

import csv
import html
import io
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvviz.capture import AttentionView, HeadProfiles, Overview
from kvviz.token_view import one_line, visible_text

COLORSCALE = "Viridis"
EVICTED_COLORSCALE = [[0.0, "#f1f1f1"], [1.0, "#5f5f5f"]]
MASK_COLOR = "#e6e6e6"
GROUP_COLORS = ["#dbe7fb", "#fbe3cf", "#d8f3e2", "#f3d9ef"]  # bands of query heads sharing a KV head
HIGHLIGHT = "#ff2d55"
EVICTED_BAR = "#9e9e9e"
LOG_FLOOR = -5.0  # log10 of the smallest weight shown in colour
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


def color_values(values: np.ndarray, scale: str = "log") -> np.ndarray:
    """What the colour encodes: log10 of the weight (floored at ``LOG_FLOOR``) or the weight."""
    values = np.asarray(values, dtype=np.float64)
    if scale == "linear":
        return values
    if scale != "log":
        raise ValueError(f"scale must be 'log' or 'linear', not {scale!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isnan(values), np.nan, np.log10(np.maximum(values, 10**LOG_FLOOR)))


def _colorbar(scale: str, title: str = "attention") -> dict:
    if scale == "log":
        exps = list(range(int(LOG_FLOOR), 1))
        return dict(title=title, tickvals=exps, ticktext=[f"1e{e}" if e else "1" for e in exps], thickness=12)
    return dict(title=title, thickness=12)


def _color_range(scale: str) -> tuple[float, float]:
    return (LOG_FLOOR, 0.0) if scale == "log" else (0.0, 1.0)


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
# overview


def overview_layout(n_heads: int, n_kv_heads: int, cells: int, gap: int = 2, group_gap: int = 4):
    """Where each thumbnail goes in the mosaic: (x offset per layer step, y offset of each head)."""
    group = max(1, n_heads // max(1, n_kv_heads))
    y0 = []
    y = 0
    for h in range(n_heads):
        if h and h % group == 0:
            y += group_gap
        y0.append(y)
        y += cells + gap
    return cells + gap, np.array(y0)


def overview_figure(
    ov: Overview,
    selected: tuple[int, int] | None = None,
    scale: str = "log",
    height: int | None = None,
) -> go.Figure:
    """Every layer (columns) and query head (rows, grouped by the KV head they share) as a small
    pooled heatmap. Each thumbnail has a clickable marker at its centre (customdata = [layer,
    head]): with ``st.plotly_chart(on_select="rerun")`` a click selects that head."""
    L, H, g, _ = ov.thumbs.shape
    step_x, y0 = overview_layout(H, ov.n_kv_heads, g)
    width = L * step_x
    height_cells = int(y0[-1] + g) if H else 0
    z = np.full((height_cells, width), np.nan)
    masked = np.full((height_cells, width), np.nan)
    for layer in range(L):
        for head in range(H):
            x = layer * step_x
            thumb = ov.thumbs[layer, head]
            z[y0[head] : y0[head] + g, x : x + g] = color_values(thumb, scale)
            masked[y0[head] : y0[head] + g, x : x + g] = np.where(np.isnan(thumb), 1.0, np.nan)
    zmin, zmax = _color_range(scale)
    fig = go.Figure()
    fig.add_trace(
        go.Heatmap(
            z=masked, colorscale=[[0, MASK_COLOR], [1, MASK_COLOR]], showscale=False, hoverinfo="skip", name="causal mask",
        )
    )
    fig.add_trace(
        go.Heatmap(
            z=z, colorscale=COLORSCALE, zmin=zmin, zmax=zmax, hoverinfo="skip", name="attention",
            colorbar=_colorbar(scale, "attention<br>(" + ov.pool + " per tile)"),
        )
    )
    group = max(1, H // max(1, ov.n_kv_heads))
    p = ov.profiles
    cx, cy, custom, hover = [], [], [], []
    for layer in range(L):
        for head in range(H):
            cx.append(layer * step_x + (g - 1) / 2)
            cy.append(y0[head] + (g - 1) / 2)
            custom.append([layer, head])
            kv = head // group
            mates = ", ".join(str(m) for m in range(kv * group, (kv + 1) * group) if m != head)
            hover.append(
                f"<b>layer {layer} · head {head}</b><br>KV head {kv}"
                + (f" (shared with heads {mates})" if mates else "")
                + f"<br>sink mass {p.sink_mass[layer, head]:.2f} · local {p.local_mass[layer, head]:.2f}"
                + f"<br>entropy {p.entropy[layer, head]:.2f} nats"
            )
    fig.add_trace(
        go.Scatter(
            x=cx, y=cy, mode="markers", name="heads", customdata=custom, hovertext=hover, hoverinfo="text",
            marker=dict(symbol="square", size=max(6, min(40, g)), color="rgba(0,0,0,0.01)"),
            selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=1)), showlegend=False,
        )
    )
    # KV groups: a light band behind the query heads that share one KV head
    for kv in range(ov.n_kv_heads):
        top, bottom = y0[kv * group], y0[min(H, (kv + 1) * group) - 1] + g
        fig.add_shape(
            type="rect", x0=-1.5, x1=width - 0.5, y0=top - 1.5, y1=bottom + 0.5, line=dict(width=0),
            fillcolor=GROUP_COLORS[kv % len(GROUP_COLORS)], layer="below", name=f"KV head {kv}",
        )
    if selected is not None:
        layer, head = selected
        if 0 <= layer < L and 0 <= head < H:
            fig.add_shape(
                type="rect", x0=layer * step_x - 1.5, x1=layer * step_x + g + 0.5, y0=y0[head] - 1.5,
                y1=y0[head] + g + 0.5, line=dict(color=HIGHLIGHT, width=3), name="selected head",
            )
    fig.update_xaxes(
        tickvals=[l * step_x + (g - 1) / 2 for l in range(L)], ticktext=[str(l) for l in range(L)],
        title="layer", showgrid=False, zeroline=False, range=[-2.5, width],
    )
    fig.update_yaxes(
        tickvals=[y0[h] + (g - 1) / 2 for h in range(H)], ticktext=[f"q{h} · kv{h // group}" for h in range(H)],
        title="query head · KV head", autorange="reversed", showgrid=False, zeroline=False,
    )
    fig.update_layout(
        height=height or max(260, 34 * H + 90), margin=dict(l=50, r=10, t=30, b=40),
        plot_bgcolor="white", clickmode="event+select", dragmode=False, hovermode="closest",
        title=dict(text=f"{ov.seq_len} tokens · {ov.tile} token{'s' if ov.tile > 1 else ''} per cell", font=dict(size=13)),
    )
    return fig


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
    hover = "query %{y}<br>key %{x}<br>" + ("attention" if view.tile == 1 else f"{view.pool} attention") + " %{customdata:.4g}"
    fig.add_trace(
        go.Heatmap(
            x=xl, y=yl, z=color_values(shown, scale), customdata=shown, zmin=zmin, zmax=zmax,
            colorscale=COLORSCALE, colorbar=_colorbar(scale, "attention" if view.tile == 1 else f"{view.pool}<br>attention") | dict(len=0.8, y=0.6),
            hovertemplate=hover + "<extra></extra>", name="attention",
        ),
        row=1, col=1,
    )
    if evicted_cols.any():
        fig.add_trace(
            go.Heatmap(
                x=xl, y=yl, z=color_values(greyed, scale), customdata=greyed, zmin=zmin, zmax=zmax,
                colorscale=EVICTED_COLORSCALE, showscale=False, name="evicted keys",
                hovertemplate=hover + "<br><b>evicted by the policy</b><extra></extra>",
            ),
            row=1, col=1,
        )
    if mask.any():
        fig.add_trace(
            go.Heatmap(
                x=xl, y=yl, z=np.where(mask, 1.0, np.nan), colorscale=[[0, MASK_COLOR], [1, MASK_COLOR]],
                showscale=False, name="causal mask", hovertemplate="query %{y}<br>key %{x}<br>masked: the key comes after the query<extra></extra>",
            ),
            row=1, col=1,
        )

    # the attention each key receives (H2O score) and the entropy of each query row
    key_score = pool_positions(view.key_score, view.k_start, view.k_stop, view.tile, view.pool)
    bar_colors = np.where(evicted_cols, EVICTED_BAR, "#3b6fb6").tolist()
    fig.add_trace(
        go.Bar(
            x=xl, y=key_score, marker=dict(color=bar_colors, pattern=dict(shape=["/" if e else "" for e in evicted_cols])),
            customdata=view.col_starts.tolist(), name="key score",
            hovertemplate="key %{x}<br>attention received %{y:.3g}<extra></extra>", showlegend=False,
        ),
        row=2, col=1,
    )
    entropy = pool_positions(view.row_entropy, view.q_start, view.q_stop, view.tile, view.pool)
    fig.add_trace(
        go.Bar(
            y=yl, x=entropy, orientation="h", marker=dict(color="#7b5aa6"), customdata=view.row_starts.tolist(),
            name="row entropy", hovertemplate="query %{y}<br>entropy %{x:.3g} nats<extra></extra>", showlegend=False,
        ),
        row=1, col=2,
    )

    # the prompt / generated boundary
    p = view.prompt_len
    if view.k_start < p < view.k_stop:
        x = (p - view.k_start) / view.tile - 0.5
        fig.add_vline(x=x, line=dict(color="#e07b00", dash="dash", width=1.5), row=1, col=1)
    if view.q_start < p < view.q_stop:
        y = (p - view.q_start) / view.tile - 0.5
        fig.add_hline(y=y, line=dict(color="#e07b00", dash="dash", width=1.5), row=1, col=1)
        fig.add_annotation(
            x=0, y=y, xref="x", yref="y", text="generated ↓", showarrow=False, xanchor="left", yanchor="top",
            font=dict(color="#e07b00", size=11),
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
    fig.update_xaxes(type="category", showgrid=False, tickangle=-60, nticks=n_ticks, row=2, col=1, title="key")
    fig.update_xaxes(type="category", showgrid=False, row=1, col=1)
    fig.update_xaxes(showgrid=True, row=1, col=2, title="entropy", side="top")
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False, nticks=n_ticks, row=1, col=1, title="query")
    fig.update_yaxes(title="received", type="log" if scale == "log" else "linear", row=2, col=1)
    if title is None:
        res = "full resolution" if view.tile == 1 else f"{view.tile}×{view.tile} tokens per tile, {view.pool}"
        title = (
            f"layer {view.layer} · head {view.head} (KV head {view.kv_head}) · queries "
            f"{view.q_start}–{view.q_stop - 1} × keys {view.k_start}–{view.k_stop - 1} · {res}"
        )
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white", bargap=0.05,
        title=dict(text=html.escape(title, quote=False), font=dict(size=13)), clickmode="event+select",
        hovermode="closest", dragmode="zoom",
    )
    return fig


# ---------------------------------------------------------------------------------------------
# head profiles


PROFILE_COLUMNS = {
    "layer": "layer",
    "head": "head",
    "kv_head": "KV head",
    "sink_mass": "sink mass",
    "local_mass": "locality",
    "entropy": "entropy (nats)",
    "norm_entropy": "entropy / max",
    "mean_distance": "mean distance",
}


def profiles_frame(profiles: HeadProfiles) -> pd.DataFrame:
    """One row per head with readable column names, for a sortable table."""
    df = pd.DataFrame(profiles.rows())
    return df.rename(columns=PROFILE_COLUMNS)


def profile_figure(profiles: HeadProfiles, selected: tuple[int, int] | None = None, color_by: str = "layer") -> go.Figure:
    """Each head as a point: attention on the first tokens (x) against attention on the last
    tokens (y), coloured by layer (or entropy). Points carry customdata = [layer, head]."""
    rows = profiles.rows()
    x = [r["sink_mass"] for r in rows]
    y = [r["local_mass"] for r in rows]
    color = [r["layer"] if color_by == "layer" else r["entropy"] for r in rows]
    hover = [
        f"<b>layer {r['layer']} · head {r['head']}</b> (KV {r['kv_head']})<br>sink mass {r['sink_mass']:.3f}"
        f"<br>locality {r['local_mass']:.3f}<br>entropy {r['entropy']:.2f} nats<br>mean distance {r['mean_distance']:.1f} tokens"
        for r in rows
    ]
    fig = go.Figure(
        go.Scatter(
            x=x, y=y, mode="markers", customdata=[[r["layer"], r["head"]] for r in rows], hovertext=hover,
            hoverinfo="text", name="heads",
            marker=dict(
                size=9, color=color, colorscale="Plasma" if color_by == "layer" else "Viridis", opacity=0.85,
                colorbar=dict(title=color_by if color_by == "layer" else "entropy", thickness=12),
                line=dict(width=0.5, color="white"),
            ),
        )
    )
    if selected is not None:
        layer, head = selected
        for r in rows:
            if r["layer"] == layer and r["head"] == head:
                fig.add_trace(
                    go.Scatter(
                        x=[r["sink_mass"]], y=[r["local_mass"]], mode="markers", name="selected head",
                        marker=dict(size=18, color="rgba(0,0,0,0)", line=dict(color=HIGHLIGHT, width=3)),
                        hoverinfo="skip", showlegend=False,
                    )
                )
    fig.update_layout(showlegend=False)
    fig.update_xaxes(title=f"sink mass: attention on the first {profiles.sink_tokens} tokens", range=[-0.03, 1.03])
    fig.update_yaxes(title=f"locality: attention on the last {profiles.local_tokens} tokens", range=[-0.03, 1.03])
    fig.update_layout(height=430, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor="#fafafa", clickmode="event+select", dragmode="zoom")
    return fig


# ---------------------------------------------------------------------------------------------
# tokens as text, and the matrix as CSV


def tokens_html(
    tokens: list[str],
    *,
    prompt_len: int,
    weights: np.ndarray | None = None,
    selected: int | None = None,
    evicted: np.ndarray | None = None,
    start: int = 0,
    stop: int | None = None,
) -> str:
    """Tokens start..stop as HTML spans (text escaped): background by ``weights`` (e.g. the
    selected query's attention, scaled to its maximum), the selected token outlined, evicted
    tokens struck through, generated tokens underlined. Each span's title gives position and weight."""
    stop = len(tokens) if stop is None else min(stop, len(tokens))
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        top = float(np.nanmax(w[start:stop])) if stop > start else 0.0
        w = w / top if top > 0 else np.zeros_like(w)
    parts = [
        '<div style="font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; '
        'line-height: 1.9; white-space: pre-wrap; word-break: break-word;">'
    ]
    if start > 0:
        parts.append(f'<span style="color:#888">… {start} tokens before …</span> ')
    for pos in range(start, stop):
        text = html.escape(visible_text(tokens[pos]), quote=True)
        style = "padding: 1px 0; border-radius: 3px;"
        title = f"#{pos}"
        if w is not None:
            a = float(np.clip(w[pos], 0, 1))
            style += f" background: rgba(255, 140, 0, {0.08 + 0.85 * a:.2f});" if a > 0.005 else ""
            title += f" · attention {weights[pos]:.3g}"
        if evicted is not None and pos < len(evicted) and evicted[pos]:
            style += " color: #9e9e9e; text-decoration: line-through;"
            title += " · evicted"
        if pos >= prompt_len:
            style += " border-bottom: 2px solid #2563eb;"
            title += " · generated"
        if selected is not None and pos == selected:
            style += f" outline: 2px solid {HIGHLIGHT}; font-weight: 700;"
            title += " · selected"
        parts.append(f'<span title="{html.escape(title, quote=True)}" style="{style}">{text}</span>')
    if stop < len(tokens):
        parts.append(f' <span style="color:#888">… {len(tokens) - stop} tokens after …</span>')
    parts.append("</div>")
    return "".join(parts)


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
    """Per decode step, the attention the step's query puts on entries the policy had evicted."""
    lost = np.asarray(lost, dtype=np.float64)
    colors = [HIGHLIGHT if s == step else "#9e9e9e" for s in range(len(lost))]
    fig = go.Figure(
        go.Bar(
            x=list(range(len(lost))), y=lost, marker=dict(color=colors), name="attention on evicted keys",
            hovertemplate="step %{x}<br>%{y:.1%} of the attention on evicted keys<extra></extra>",
        )
    )
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="on evicted", tickformat=".0%", rangemode="tozero")
    fig.update_layout(height=170, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor="white", bargap=0.15)
    return fig
