"""Figures of attention over the whole model: the overview grid of every layer and head, and the
head profiles (chart and table).

Pure builders: attention maps in (``kvviz.attention.maps``), plotly figures or data frames out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from kvviz.attention.data import HeadProfiles, Overview
from kvviz.charts._attention_common import COLORSCALE, HIGHLIGHT, MASK_COLOR, _color_range, _colorbar, color_values, pool_name
from kvviz.charts.style import BANDS, PANEL
from kvviz.i18n import N_, _

GROUP_COLORS = BANDS  # bands of query heads sharing a KV head


# ---------------------------------------------------------------------------------------------
# overview


def per_cell(tile: int) -> str:
    """``"1 token per cell"``, ``"8 tokens per cell"``, in the session's language (two messages, not
    ngettext: tests/unit/test_i18n.py looks a plural msgid up as a message of its own)."""
    return (_("{n} token per cell") if tile == 1 else _("{n} tokens per cell")).format(n=tile)


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
    L, H, g = ov.thumbs.shape[:3]
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
            z=masked, colorscale=[[0, MASK_COLOR], [1, MASK_COLOR]], showscale=False, hoverinfo="skip", name=_("causal mask"),
        )
    )
    fig.add_trace(
        go.Heatmap(
            z=z, colorscale=COLORSCALE, zmin=zmin, zmax=zmax, hoverinfo="skip", name=_("attention"),
            colorbar=_colorbar(scale, _("attention<br>({pool} per tile)").format(pool=pool_name(ov.pool))),
        )
    )
    group = max(1, H // max(1, ov.n_kv_heads))
    p = ov.profiles
    cx, cy, custom, hover = [], [], [], []
    head_line, shared_line = _("<b>layer {layer} · head {head}</b><br>KV head {kv}"), _(" (shared with heads {mates})")
    profile_lines = _("<br>sink mass {sink} · local {local}<br>entropy {entropy} nats")
    for layer in range(L):
        for head in range(H):
            cx.append(layer * step_x + (g - 1) / 2)
            cy.append(y0[head] + (g - 1) / 2)
            custom.append([layer, head])
            kv = head // group
            mates = ", ".join(str(m) for m in range(kv * group, (kv + 1) * group) if m != head)
            hover.append(
                head_line.format(layer=layer, head=head, kv=kv)
                + (shared_line.format(mates=mates) if mates else "")
                + profile_lines.format(sink=f"{p.sink_mass[layer, head]:.2f}", local=f"{p.local_mass[layer, head]:.2f}",
                                       entropy=f"{p.entropy[layer, head]:.2f}")
            )
    fig.add_trace(
        go.Scatter(
            x=cx, y=cy, mode="markers", name=_("heads"), customdata=custom, hovertext=hover, hoverinfo="text",
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
        title=_("layer"), showgrid=False, zeroline=False, range=[-2.5, width],
    )
    fig.update_yaxes(
        tickvals=[y0[h] + (g - 1) / 2 for h in range(H)], ticktext=[f"q{h} · kv{h // group}" for h in range(H)],
        title=_("query head · KV head"), autorange="reversed", showgrid=False, zeroline=False,
    )
    fig.update_layout(
        height=height or max(260, 34 * H + 90), margin=dict(l=50, r=10, t=30, b=40),
        plot_bgcolor="white", clickmode="event+select", dragmode=False, hovermode="closest",
        title=dict(text=_("{n} tokens · {per_cell}").format(n=ov.seq_len, per_cell=per_cell(ov.tile)), font=dict(size=13)),
    )
    return fig


# ---------------------------------------------------------------------------------------------
# head profiles


PROFILE_COLUMNS = {  # English; profiles_frame shows them in the session's language
    "layer": N_("layer"),
    "head": N_("head"),
    "kv_head": N_("KV head"),
    "sink_mass": N_("sink mass"),
    "local_mass": N_("locality"),
    "entropy": N_("entropy (nats)"),
    "norm_entropy": N_("entropy / max"),
    "mean_distance": N_("mean distance"),
}


def profile_column(field: str) -> str:
    """The shown name of a ``HeadProfiles.rows()`` field, in the session's language."""
    return _(PROFILE_COLUMNS[field])


def profiles_frame(profiles: HeadProfiles) -> pd.DataFrame:
    """One row per head with readable column names, for a sortable table."""
    df = pd.DataFrame(profiles.rows())
    return df.rename(columns={field: profile_column(field) for field in PROFILE_COLUMNS})


def profile_figure(profiles: HeadProfiles, selected: tuple[int, int] | None = None, color_by: str = "layer") -> go.Figure:
    """Each head as a point: attention on the first tokens (x) against attention on the last
    tokens (y), coloured by layer (or entropy). Points carry customdata = [layer, head]."""
    rows = profiles.rows()
    x = [r["sink_mass"] for r in rows]
    y = [r["local_mass"] for r in rows]
    color = [r["layer"] if color_by == "layer" else r["entropy"] for r in rows]
    line = _("<b>layer {layer} · head {head}</b> (KV {kv_head})<br>sink mass {sink}<br>locality {local}<br>entropy {entropy} nats"
             "<br>mean distance {distance} tokens")
    hover = [
        line.format(layer=r["layer"], head=r["head"], kv_head=r["kv_head"], sink=f"{r['sink_mass']:.3f}", local=f"{r['local_mass']:.3f}",
                    entropy=f"{r['entropy']:.2f}", distance=f"{r['mean_distance']:.1f}")
        for r in rows
    ]
    fig = go.Figure(
        go.Scatter(
            x=x, y=y, mode="markers", customdata=[[r["layer"], r["head"]] for r in rows], hovertext=hover,
            hoverinfo="text", name=_("heads"),
            marker=dict(
                size=9, color=color, colorscale="Plasma" if color_by == "layer" else "Viridis", opacity=0.85,
                colorbar=dict(title=_("layer") if color_by == "layer" else _("entropy"), thickness=12),
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
                        x=[r["sink_mass"]], y=[r["local_mass"]], mode="markers", name=_("selected head"),
                        marker=dict(size=18, color="rgba(0,0,0,0)", line=dict(color=HIGHLIGHT, width=3)),
                        hoverinfo="skip", showlegend=False,
                    )
                )
    fig.update_layout(showlegend=False)
    fig.update_xaxes(title=_("sink mass: attention on the first {n} tokens").format(n=profiles.sink_tokens), range=[-0.03, 1.03])
    fig.update_yaxes(title=_("locality: attention on the last {n} tokens").format(n=profiles.local_tokens), range=[-0.03, 1.03])
    fig.update_layout(height=430, margin=dict(l=10, r=10, t=10, b=10), plot_bgcolor=PANEL, clickmode="event+select", dragmode="zoom")
    return fig
