"""Memory: the bytes a policy's cache holds per step against the full cache, the reconstruction
error of a lossy store, and where a quantizing store keeps full precision."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from kvviz.charts.style import COLORS, tint
from kvviz.i18n import _
from kvviz.record.metrics import byte_unit, format_bytes, memory_saving
from kvviz.record.token_states import clamp_step, newest_held_share
from kvviz.record.trace import Trace


def saving_line(trace: Trace, step: int | None = None) -> str:
    m = memory_saving(trace, step)
    return _("step {step}: {held} held vs {full} for the full cache, saves {saved} ({pct}%)").format(
        step=m.step, held=format_bytes(m.kv_bytes), full=format_bytes(m.kv_bytes_full), saved=format_bytes(m.saved_bytes),
        pct=f"{m.saved_pct:.1f}",
    )


def kv_bytes_figure(trace: Trace, step: int | None = None) -> go.Figure:
    """``kv_bytes`` per step against ``kv_bytes_full``, the saving shaded, the chosen step marked."""
    steps = np.arange(len(trace.kv_bytes))
    held = np.asarray(trace.kv_bytes, dtype=float)
    full = np.asarray(trace.kv_bytes_full, dtype=float)
    book = np.asarray(trace.bookkeeping_bytes, dtype=float)
    scale, unit = byte_unit(max(full.max(initial=0), held.max(initial=0)))
    fig = go.Figure()
    fig.add_scatter(
        x=steps, y=full / scale, name=_("full cache"), mode="lines", line=dict(color=COLORS["full"], dash="dash"),
        hovertemplate=_("step {step}<br>full cache {value} {unit}").format(step="%{x}", value="%{y:.3f}", unit=unit) + "<extra></extra>",
    )
    fig.add_scatter(
        x=steps, y=held / scale, name=_("{policy} (K/V held)").format(policy=trace.policy), mode="lines+markers", fill="tonexty",
        fillcolor=tint(COLORS["kept"], 0.15), line=dict(color=COLORS["kept"]), marker=dict(size=4),
        hovertemplate=_("step {step}<br>held {value} {unit}").format(step="%{x}", value="%{y:.3f}", unit=unit) + "<extra></extra>",
    )
    if book.any():
        fig.add_scatter(
            x=steps, y=book / scale, name=_("bookkeeping (positions, scores)"), mode="lines", line=dict(color=COLORS["bookkeeping"], dash="dot"),
            hovertemplate=_("step {step}<br>bookkeeping {value} {unit}").format(step="%{x}", value="%{y:.3f}", unit=unit) + "<extra></extra>",
        )
    if len(steps):
        s = clamp_step(trace, len(steps) - 1 if step is None else step)
        m = memory_saving(trace, s)
        fig.add_vline(x=s, line=dict(color=COLORS["highlight"], width=1, dash="dash"))
        fig.add_annotation(
            x=s, y=m.kv_bytes / scale, text=_("saves {saved} ({pct}%)").format(saved=format_bytes(m.saved_bytes), pct=f"{m.saved_pct:.0f}"),
            showarrow=True, arrowhead=2, ax=40, ay=-40, bgcolor="rgba(255,255,255,0.8)",
        )
    fig.update_layout(
        title=_("KV cache memory per step: {saving}").format(saving=saving_line(trace, step)),
        height=340,
        margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
    )
    fig.update_layout(legend_traceorder="normal")
    fig.update_xaxes(title=_("decode step"), tickformat="d", dtick=1 if len(steps) <= 20 else None)
    fig.update_yaxes(title=unit, rangemode="tozero")
    return fig


def quant_error_figure(trace: Trace) -> go.Figure:
    """Relative reconstruction error of K and V per layer, for a lossy store (quantization, low
    rank, head sharing): ‖x − x̂‖ / ‖x‖ over every key and value appended."""
    q = trace.store_error
    keys, values = (list(q.key), list(q.value)) if q is not None else ([], [])
    layers = np.arange(max(len(keys), len(values)))
    fig = go.Figure()
    fig.add_bar(x=layers[: len(keys)], y=keys, name=_("keys"), marker_color=COLORS["keys"],
                hovertemplate=_("layer {layer}<br>key error {error}").format(layer="%{x}", error="%{y:.2%}") + "<extra></extra>")
    fig.add_bar(x=layers[: len(values)], y=values, name=_("values"), marker_color=COLORS["values"],
                hovertemplate=_("layer {layer}<br>value error {error}").format(layer="%{x}", error="%{y:.2%}") + "<extra></extra>")
    mean = lambda xs: 100 * float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    fig.update_layout(
        title=_("Reconstruction error per layer (‖x − x̂‖ / ‖x‖): keys {keys}%, values {values}% on average").format(
            keys=f"{mean(keys):.1f}", values=f"{mean(values):.1f}"),
        barmode="group", height=320, margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
    )
    fig.update_xaxes(title=_("layer"), dtick=1 if len(layers) <= 32 else None)
    fig.update_yaxes(title=_("relative error"), tickformat=".1%", rangemode="tozero")
    return fig


def residual_window_figure(trace: Trace) -> go.Figure:
    """Which held entries the quantizing store keeps in full precision at the end of the run: the
    newest ``full_precision_keys`` keys and ``full_precision_values`` values of each layer and KV
    head (``trace.store_error``); the rest is quantized. Evicted positions are blank."""
    q = trace.store_error
    last = clamp_step(trace, trace.n_steps - 1)
    rows = {_("keys"): int(q.full_precision_keys or 0) if q else 0, _("values"): int(q.full_precision_values or 0) if q else 0}
    z = np.stack([newest_held_share(trace, last, tail) for tail in rows.values()])  # (2, positions)
    n = trace.prompt_len + last  # positions in the cache at the last step
    z = z[:, :n]
    fig = go.Figure()
    fig.add_heatmap(
        z=z, x=np.arange(n), y=list(rows), zmin=0, zmax=1, showscale=False, xgap=0.5 if n <= 200 else 0, ygap=3,
        colorscale=[[0, COLORS["quantized"]], [1, COLORS["full_precision"]]],
        hovertemplate=_("{row} of token {position}: full precision in {share} of layers × KV heads").format(
            row="%{y}", position="%{x}", share="%{z:.0%}") + "<extra></extra>",
    )
    parts = [_("the newest {n} {row}").format(n=t, row=row) for row, t in rows.items() if t]
    fig.update_layout(
        title=_("At step {step}: {parts} held in full precision (orange); the rest quantized (sky blue)").format(
            step=last, parts=_("{one} and {other}").format(one=parts[0], other=parts[1]) if len(parts) == 2 else parts[0])
        if parts else _("Every entry is quantized"),
        height=190, margin=dict(l=10, r=10, t=50, b=10),
    )
    fig.update_xaxes(title=_("token position (blank: evicted)"), range=[-0.5, max(n, 1) - 0.5])
    return fig
