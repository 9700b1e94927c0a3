"""The policy's output against the full cache's: the two outputs token by token with the first
divergence marked, and per step the KL divergence and top-1 agreement of the teacher-forced
policy with the full cache."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvviz.record import metrics
from kvviz.charts.style import COLORS, tint
from kvviz.charts.token_map import plotly_text
from kvviz.i18n import _
from kvviz.record.token_states import one_line, quoted
from kvviz.record.trace import Trace

SAME, DIFFERENT, MISSING = 1.0, 0.0, np.nan
DIVERGENCE_COLOR = COLORS["differ"]


def first_divergence(full: Trace, policy: Trace) -> int | None:
    return metrics.first_divergence(full.generated_ids, policy.generated_ids)


def _generated(trace: Trace) -> list[str]:
    return list(trace.tokens[trace.prompt_len :])


def _mark_divergence(fig: go.Figure, div: int | None, label: str, **kw) -> None:
    if div is not None:
        fig.add_vline(x=div, line=dict(color=DIVERGENCE_COLOR, width=2, dash="dash"), **kw)
        fig.add_annotation(
            x=div, y=1.0, yref="paper", text=plotly_text(label), showarrow=False, xanchor="left", yanchor="bottom",
            font=dict(color=DIVERGENCE_COLOR),
        )


def output_comparison_figure(full: Trace, policy: Trace) -> go.Figure:
    """Two rows of generated tokens (full cache, policy); a cell is blue where the two outputs
    agree at that index, vermillion where they differ; a dashed line at the first divergence."""
    a, b = _generated(full), _generated(policy)
    n = max(len(a), len(b), 1)
    z = np.full((2, n), MISSING)
    text = np.full((2, n), "", dtype=object)
    fa, pb = full.generated_ids, policy.generated_ids
    for row, toks in enumerate((a, b)):
        for i, t in enumerate(toks):
            z[row, i] = SAME if i < len(fa) and i < len(pb) and fa[i] == pb[i] else DIFFERENT
            text[row, i] = plotly_text(one_line(t))
    div = first_divergence(full, policy)
    names = [_("full cache"), policy.policy]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=np.arange(n), y=names, text=text, texttemplate="%{text}", textfont=dict(size=11),
            zmin=0, zmax=1, colorscale=[[0, tint(COLORS["differ"], 0.3)], [1, tint(COLORS["agree"], 0.25)]], showscale=False, xgap=2, ygap=4,
            hovertemplate="%{y}<br>" + _("token {index}: {text}").format(index="%{x}", text="%{text}") + "<extra></extra>",
        )
    )
    label = _("outputs agree") if div is None else _("first divergence at token {index}").format(index=div)
    _mark_divergence(fig, None if div is None else div - 0.5, label)
    fig.update_layout(
        title=_("Output, token by token: {label}").format(label=label), height=200, margin=dict(l=10, r=10, t=50, b=10),
    )
    fig.update_xaxes(title=_("generated token"), dtick=1 if n <= 40 else None)
    fig.update_yaxes(autorange="reversed")
    return fig


def agreement_figure(forced: Trace, full: Trace | None = None, divergence: int | None = None) -> go.Figure:
    """Per step: KL(full ‖ policy) of the next-token distributions, and whether both would pick
    the same top-1 token, with the policy teacher-forced on the full cache's output."""
    kl = np.asarray(forced.kl_to_reference if forced.kl_to_reference is not None else [], dtype=float)
    top1 = np.asarray(forced.top1_agreement if forced.top1_agreement is not None else [], dtype=bool)
    steps = np.arange(len(kl))
    tokens = _generated(full) if full is not None else [""] * len(kl)
    labels = [plotly_text(quoted(tokens[i])) if i < len(tokens) else "" for i in steps]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    fig.add_bar(
        x=steps, y=kl, name=_("KL (nats)"), marker_color=COLORS["measure"], customdata=labels,
        hovertemplate=_("step {step} (full cache chose {token})<br>KL {kl} nats").format(step="%{x}", token="%{customdata}", kl="%{y:.4f}")
        + "<extra></extra>", row=1, col=1,
    )
    for agree, name, color, symbol in ((True, _("top-1 agrees"), COLORS["agree"], "circle"), (False, _("top-1 differs"), DIVERGENCE_COLOR, "x")):
        mask = top1 == agree
        fig.add_scatter(
            x=steps[mask], y=np.zeros(int(mask.sum())), mode="markers", name=name,
            marker=dict(color=color, symbol=symbol, size=11), customdata=np.array(labels, dtype=object)[mask] if len(labels) else None,
            hovertemplate=_("step {step}: {what} (full cache chose {token})").format(step="%{x}", what=name, token="%{customdata}")
            + "<extra></extra>", row=2, col=1,
        )
    agree_share = float(top1.mean()) if top1.size else float("nan")
    mean_kl = float(kl.mean()) if kl.size else float("nan")
    if divergence is not None:
        _mark_divergence(fig, divergence, _("outputs diverge at step {step}").format(step=divergence))
    fig.update_layout(
        title=_("Against the full cache, teacher-forced: mean KL {kl} nats, top-1 agreement {share}").format(
            kl=f"{mean_kl:.4f}", share=f"{agree_share:.0%}"),
        height=360, margin=dict(l=10, r=10, t=60, b=10), legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
    )
    fig.update_yaxes(title=_("KL (nats)"), rangemode="tozero", row=1, col=1)
    fig.update_yaxes(visible=False, range=[-1, 1], row=2, col=1)
    fig.update_xaxes(title=_("decode step"), row=2, col=1)
    return fig
