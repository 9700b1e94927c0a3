"""Figures of the Dedup page: how far a copied span's KV is from the full cache's, layer by layer,
and what recomputing a share of its tokens buys back (pure: data in, figure out)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvviz.charts.style import COLORS, style


def deviation_figure(key_deviation: list[float], value_deviation: list[float]) -> go.Figure:
    """Relative distance ||copy - full|| / ||full|| of the copied tokens' keys and values, per layer."""
    fig = go.Figure()
    layers = list(range(len(key_deviation)))
    for name, values, color, dash, symbol in (("keys (re-rotated)", key_deviation, COLORS["keys"], "solid", "circle"),
                                               ("values", value_deviation, COLORS["values"], "dash", "square")):
        fig.add_scatter(x=layers, y=values, name=name, mode="lines+markers", line=dict(color=color, dash=dash),
                        marker=dict(symbol=symbol, size=6), hovertemplate=f"layer %{{x}}: {name} %{{y:.3f}}<extra></extra>")
    style(fig, height=300, title="How far the copy is from the full cache, per layer")
    fig.update_xaxes(title="layer", tickformat="d")
    fig.update_yaxes(title="relative distance", rangemode="tozero")
    return fig


def recompute_figure(rows: list[dict], full_bytes: int) -> go.Figure:
    """Mean KL of the next tokens (left) and bytes held (right) against the share recomputed."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    shares = [100 * r["share"] for r in rows]
    fig.add_scatter(x=shares, y=[r["kl_mean"] for r in rows], name="KL to the full cache (mean, nats)", mode="lines+markers",
                    line=dict(color=COLORS["differ"]), marker=dict(symbol="circle", size=8),
                    text=[f"top-1 {r['top1_agreement']:.0%}" for r in rows],
                    hovertemplate="%{x:.0f}% recomputed: KL %{y:.4f}, %{text}<extra></extra>")
    fig.add_scatter(x=shares, y=[100 * r["kv_bytes"] / full_bytes for r in rows], name="bytes held (% of full)",
                    mode="lines+markers", line=dict(color=COLORS["full"], dash="dot"), marker=dict(symbol="square", size=7),
                    hovertemplate="%{x:.0f}% recomputed: %{y:.1f}% of the full cache's bytes<extra></extra>", secondary_y=True)
    style(fig, height=320, title="Recomputing the most-deviating tokens (CacheBlend)")
    fig.update_xaxes(title="share of copied tokens recomputed per layer (%)")
    fig.update_yaxes(title="KL (nats)", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title="bytes held (%)", range=[0, 105], tick0=0, dtick=25, showgrid=False, secondary_y=True)
    return fig
