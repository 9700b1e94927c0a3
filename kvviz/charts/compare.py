"""Figures of a comparison of several policies on one prompt (``ComparisonResult``): memory per
step, and KL and top-1 agreement with the full cache per step, one colour per policy
(``series_color``), the full cache dashed in ``COLORS["full"]``; and the standalone HTML report.

Pure: a result in, a figure or a Report out; no torch."""

from __future__ import annotations

import textwrap

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvviz.charts.style import COLORS, series_color, series_line, style
from kvviz.charts.token_map import plotly_text
from kvviz.compare.result import ComparisonResult
from kvviz.record.metrics import byte_unit
from kvviz.record.report import Report
from kvviz.record.token_states import quoted
from kvviz.i18n import _

FULL_LINE = dict(color=COLORS["full"], dash="dash", width=2)
LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.22, x=0)  # up to four long labels: under the plot


def _layout(fig: go.Figure, height: int, title: str) -> go.Figure:
    style(fig, height=height, title=title)
    fig.update_layout(legend=LEGEND_BELOW, margin=dict(l=10, r=10, t=60, b=10))
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)  # room for tick labels and policy names outside Streamlit (the report)
    return fig


def _step_rule(fig: go.Figure, step: int | None, **kw) -> None:
    if step is not None:
        fig.add_vline(x=step, line=dict(color=COLORS["highlight"], width=1, dash="dot"), **kw)


def coinciding(labels: list[str], series: list) -> str:
    """A note naming the policies whose series are equal at every step (their lines lie on one
    another: the earlier one is drawn wider, around the later), or ""."""
    groups: list[list[int]] = []
    for i, values in enumerate(series):
        for group in groups:
            other = series[group[0]]
            if len(other) == len(values) and np.array_equal(np.asarray(other, float), np.asarray(values, float)):
                group.append(i)
                break
        else:
            groups.append([i])
    same = [" = ".join(labels[i] for i in g) for g in groups if len(g) > 1]
    return _("Lines on one another (the same bytes at every step): {groups}").format(groups=_("; ").join(same)) if same else ""


def memory_figure(result: ComparisonResult, step: int | None = None) -> go.Figure:
    """K/V bytes held per step: the full cache dashed, one line per policy."""
    traces = [result.full] + [r.trace for r in result.runs]
    top = max(max(t.kv_bytes_full + t.kv_bytes) for t in traces)
    scale, unit = byte_unit(top)
    fig = go.Figure()
    full = result.full
    fig.add_scatter(
        x=np.arange(full.n_steps), y=np.asarray(full.kv_bytes_full, float) / scale, name=_("full cache"), mode="lines",
        line=FULL_LINE, meta="full",
        hovertemplate=_("full cache") + "<br>" + _("step {step}: {value} {unit}").format(step="%{x}", value="%{y:.3f}", unit=unit) + "<extra></extra>",
    )
    for i, (label, run) in enumerate(zip(result.labels, result.runs)):
        t = run.trace
        held = np.asarray(t.kv_bytes, float)
        pct = 100 * held / np.maximum(np.asarray(t.kv_bytes_full, float), 1)
        fig.add_scatter(
            x=np.arange(t.n_steps), y=held / scale, name=plotly_text(label), mode="lines+markers",
            **series_line(i, len(result.runs)), customdata=pct, meta=f"p{i + 1}",
            hovertemplate=plotly_text(label) + "<br>" + _("step {step}: {value} {unit} ({pct}% of full)").format(
                step="%{x}", value="%{y:.3f}", unit=unit, pct="%{customdata:.0f}") + "<extra></extra>",
        )
    _step_rule(fig, step)
    same = coinciding(result.labels, [r.trace.kv_bytes for r in result.runs])
    note = f"<br><sup>{'<br>'.join(plotly_text(line) for line in textwrap.wrap(same, 70))}</sup>" if same else ""  # half a page wide
    _layout(fig, 400, _("K/V cache held per step") + note)
    fig.update_xaxes(title=_("decode step"), tickformat="d", rangemode="tozero", dtick=1 if result.n_steps <= 20 else None)
    fig.update_yaxes(title=unit, rangemode="tozero")
    return fig


def agreement_figure(result: ComparisonResult, step: int | None = None) -> go.Figure:
    """Per step, teacher-forced on the full cache's output: KL(full ‖ policy) per policy (top),
    and whether each policy's top-1 token is the full cache's (bottom, one row per policy).
    A diamond on each policy's KL line marks where its free output first differs from the full
    cache's (``DIVERGENCE_NOTE``)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.62, 0.38], vertical_spacing=0.08)
    n = result.full.n_steps
    tokens = [plotly_text(quoted(t)) for t in result.full.tokens[result.full.prompt_len :]]
    fig.add_scatter(
        x=np.arange(n), y=np.zeros(n), name=_("full cache (KL 0)"), mode="lines", line=FULL_LINE, meta="full",
        hoverinfo="skip", row=1, col=1,
    )
    labels = result.labels
    for i, (label, run) in enumerate(zip(labels, result.runs)):
        color = series_color(i)
        forced = run.forced
        if forced is None or forced.kl_to_reference is None:
            continue
        kl = np.asarray(forced.kl_to_reference, float)
        steps = np.arange(len(kl))
        fig.add_scatter(
            x=steps, y=kl, name=plotly_text(label), mode="lines+markers", **series_line(i, len(labels)),
            customdata=tokens[: len(kl)], meta=f"p{i + 1}", legendgroup=f"p{i + 1}",
            hovertemplate=plotly_text(label) + "<br>" + _("step {step} (full cache chose {token}): KL {kl} nats").format(
                step="%{x}", token="%{customdata}", kl="%{y:.4f}") + "<extra></extra>",
            row=1, col=1,
        )
        div = run.first_divergence(result.full)
        if div is not None and div < len(kl):
            fig.add_scatter(
                x=[div], y=[kl[div]], mode="markers", name=_("first divergence: {policy}").format(policy=plotly_text(label)),
                marker=dict(symbol="diamond", size=13, color=color, line=dict(color=COLORS["differ"], width=2)),
                meta=f"p{i + 1}.divergence", legendgroup=f"p{i + 1}", showlegend=False,
                hovertemplate=plotly_text(label) + "<br>" + _("output first differs at token {i} (counted from 0 = the first generated token)").format(
                    i=div) + "<extra></extra>",
                row=1, col=1,
            )
        agree = np.asarray(forced.top1_agreement, bool)
        row_name = [plotly_text(label)] * len(agree)
        fig.add_scatter(
            x=steps, y=row_name, mode="markers", name=_("top-1: {policy}").format(policy=plotly_text(label)), showlegend=False,
            marker=dict(symbol=np.where(agree, "circle", "x-thin-open").tolist(), size=11, color=color, line=dict(color=color, width=2)),
            customdata=np.where(agree, _("same top-1 as the full cache"), _("top-1 differs from the full cache")),
            meta=f"p{i + 1}.top1", legendgroup=f"p{i + 1}",
            hovertemplate=plotly_text(label) + "<br>" + _("step {step}: {what}").format(step="%{x}", what="%{customdata}") + "<extra></extra>",
            row=2, col=1,
        )
    _step_rule(fig, step, row="all", col=1)
    _layout(
        fig, 360 + 30 * len(labels),
        _("KL and top-1 against the full cache, teacher-forced on its output")
        + "<br><sup>" + _("◆ where the free output first differs · ● same top-1 token · ✕ another top-1 token") + "</sup>",
    )
    fig.update_yaxes(title=_("KL (nats)"), rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title=_("top-1"), autorange="reversed", row=2, col=1)
    fig.update_xaxes(title=_("decode step"), tickformat="d", dtick=1 if n <= 20 else None, row=2, col=1)
    return fig


def report(result: ComparisonResult, step: int | None = None) -> Report:
    """The comparison as a standalone HTML report: settings, both charts, the tables."""
    s = result.settings
    prompt = s.prompt_text if len(s.prompt_text) <= 4000 else s.prompt_text[:4000] + " [...]"
    settings = {
        "model": s.model,
        "prompt": s.prompt_name,
        **{f"prompt · {k}": v for k, v in s.prompt_params.items()},
        "chat template": s.chat,
        "prompt tokens": result.full.prompt_len,
        "new tokens": s.max_new_tokens,
        **{f"p{i}": spec.to_text() for i, spec in enumerate(s.policies, start=1)},
        "step in view": step if step is not None else s.step,
        "device": f"{result.full.device}, {result.full.dtype}",
    }
    intro = (
        "Each policy generated greedily on the same prompt, and was teacher-forced on the full cache's output "
        "to measure the KL divergence and top-1 agreement of its next-token distribution at every step."
        + (" The run was stopped: only the policies that finished are shown." if result.stopped else "")
    )
    rep = Report(f"kvviz: {len(result.runs)} policies on one prompt", intro=intro, settings=settings)
    summary = result.summary_table(step)
    summary["first divergence"] = summary["first divergence"].astype(object).where(summary["first divergence"].notna(), "none")
    rep.add("Summary", summary)
    rep.add("Memory per step", memory_figure(result, step))
    rep.add("KL and top-1 per step", agreement_figure(result, step))
    rep.add("Per step", result.steps_table())
    rep.add("Prompt", prompt)
    return rep
