"""Figures of the Dedup page: how far a copied span's KV is from the full cache's, layer by layer,
and what recomputing a share of its tokens buys back (pure: data in, figure out)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvviz.charts.style import COLORS, style
from kvviz.i18n import _


def deviation_figure(key_deviation: list[float], value_deviation: list[float]) -> go.Figure:
    """Relative distance ||copy - full|| / ||full|| of the copied tokens' keys and values, per layer."""
    fig = go.Figure()
    layers = list(range(len(key_deviation)))
    for name, values, color, dash, symbol in ((_("keys (re-rotated)"), key_deviation, COLORS["keys"], "solid", "circle"),
                                               (_("values"), value_deviation, COLORS["values"], "dash", "square")):
        hover = _("layer {layer}: {name} {value}").format(layer="%{x}", name=name, value="%{y:.3f}")
        fig.add_scatter(x=layers, y=values, name=name, mode="lines+markers", line=dict(color=color, dash=dash),
                        marker=dict(symbol=symbol, size=6), hovertemplate=hover + "<extra></extra>")
    style(fig, height=300, title=_("How far the copy is from the full cache, per layer"))
    fig.update_xaxes(title=_("layer"), tickformat="d")
    fig.update_yaxes(title=_("relative distance"), rangemode="tozero")
    return fig


def recompute_figure(rows: list[dict], full_bytes: int) -> go.Figure:
    """Mean KL of the next tokens (left) and bytes held (right) against the share recomputed."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    shares = [100 * r["share"] for r in rows]
    fig.add_scatter(x=shares, y=[r["kl_mean"] for r in rows], name=_("KL to the full cache (mean, nats)"), mode="lines+markers",
                    line=dict(color=COLORS["differ"]), marker=dict(symbol="circle", size=8),
                    text=[_("top-1 {share}").format(share=f"{r['top1_agreement']:.0%}") for r in rows],
                    hovertemplate=_("{share}% recomputed: KL {kl}, {text}").format(share="%{x:.0f}", kl="%{y:.4f}", text="%{text}")
                    + "<extra></extra>")
    fig.add_scatter(x=shares, y=[100 * r["kv_bytes"] / full_bytes for r in rows], name=_("bytes held (% of full)"),
                    mode="lines+markers", line=dict(color=COLORS["full"], dash="dot"), marker=dict(symbol="square", size=7),
                    hovertemplate=_("{share}% recomputed: {bytes}% of the full cache's bytes").format(share="%{x:.0f}", bytes="%{y:.1f}")
                    + "<extra></extra>", secondary_y=True)
    style(fig, height=320, title=_("Recomputing the most-deviating tokens (CacheBlend)"))
    fig.update_xaxes(title=_("share of copied tokens recomputed per layer (%)"))
    fig.update_yaxes(title=_("KL (nats)"), rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title=_("bytes held (%)"), range=[0, 105], tick0=0, dtick=25, showgrid=False, secondary_y=True)
    return fig
