"""Figures of attention over the whole model: the overview grid of every layer and head, and the
head profiles (chart and table).

Pure builders: attention maps in (``kvviz.attention.maps``), plotly figures or data frames out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from kvviz.attention.data import HeadProfiles, Overview
from kvviz.charts._attention_common import COLORSCALE, HIGHLIGHT, MASK_COLOR, _color_range, _colorbar, color_values
from kvviz.charts.style import BANDS, PANEL

GROUP_COLORS = BANDS  # bands of query heads sharing a KV head


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
    fig.update_layout(height=430, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor=PANEL, clickmode="event+select", dragmode="zoom")
    return fig
