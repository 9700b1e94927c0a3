"""Figures and tables of the memory calculator: KV memory against context for several
architectures and cache dtypes with the GPU's room after the weights, and the four kinds of
attention side by side. Pure: numbers in, plotly figures out (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from kvviz.charts.style import COLORS, series_color, style, tint
from kvviz.record.metrics import byte_unit, format_bytes

DASHES = ["solid", "dash", "dot", "dashdot", "longdash"]


@dataclass(frozen=True)
class Curve:
    model: str  # display name
    dtype: str
    contexts: np.ndarray  # (n,) tokens
    bytes: np.ndarray  # (n,) KV bytes of the whole batch


def context_label(n: float) -> str:
    """4096 -> '4k', 1048576 -> '1M', 1000 -> '1,000'."""
    n = int(n)
    if n >= 2**20 and n % 2**20 == 0:
        return f"{n // 2**20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}k"
    return f"{n:,}"


def context_axis(max_context: int, points: int = 64) -> np.ndarray:
    """Log-spaced context lengths from 128 to ``max_context`` tokens (int64, unique, increasing)."""
    hi = max(int(max_context), 256)
    return np.unique(np.round(np.geomspace(128, hi, points)).astype(np.int64))


def memory_figure(curves: list[Curve], rooms: dict[str, int | None], context: int, gpu: str | None, batch: int = 1) -> go.Figure:
    """KV memory of the batch against context: one colour per model, one dash per cache dtype;
    ``rooms`` (model -> bytes left on the GPU after its weights) are dotted horizontal lines in the
    model's colour (none where the weights do not fit), and
    the chosen ``context`` as a vertical rule."""
    models = list(dict.fromkeys(c.model for c in curves))
    dtypes = list(dict.fromkeys(c.dtype for c in curves))
    top = max([float(c.bytes.max()) for c in curves if c.bytes.size] + [float(r) for r in rooms.values() if r and r > 0] + [1.0])
    scale, unit = byte_unit(top)
    fig = go.Figure()
    for c in curves:
        color = series_color(models.index(c.model))
        fig.add_scatter(
            x=c.contexts, y=c.bytes / scale, mode="lines", name=f"{c.model} · {c.dtype}",
            line=dict(color=color, dash=DASHES[dtypes.index(c.dtype) % len(DASHES)], width=2.5),
            customdata=[format_bytes(b) for b in c.bytes],
            hovertemplate=f"{c.model} · {c.dtype}<br>%{{x:,}} tokens: %{{customdata}}<extra></extra>",
        )
    for i, (model, room) in enumerate(rooms.items()):
        if room is None or room <= 0:
            continue
        color = series_color(models.index(model)) if model in models else COLORS["limit"]
        fig.add_hline(
            y=room / scale, line=dict(color=color, dash="dot", width=1.5),
            annotation_text=f"{gpu}: {format_bytes(room)} left after the {model} weights",
            annotation_position="top left" if i % 2 == 0 else "bottom right", annotation_font=dict(color=color, size=11),
        )
    fig.add_vline(x=context, line=dict(color=COLORS["highlight"], width=1, dash="dash"))
    ticks = [t for t in 2 ** np.arange(7, 24) if curves and t <= max(c.contexts.max() for c in curves)]
    fig.update_xaxes(type="log", title="context (tokens per sequence)", tickvals=ticks, ticktext=[context_label(t) for t in ticks])
    fig.update_yaxes(title=f"KV cache of {batch} sequence{'s' if batch > 1 else ''} ({unit})", rangemode="tozero")
    what = f"batch {batch}" if batch > 1 else "one sequence"
    return style(fig, height=420, title=f"KV cache memory against context ({what}); dotted: room on the GPU after the weights")


def attention_kinds_figure(rows: list[dict]) -> go.Figure:
    """Bytes per token of MHA, GQA, MQA and MLA models beside what each would cache with plain MHA.
    rows: {"kind", "model", "bytes_per_token", "mha_bytes_per_token"} (log scale: they span 200×)."""
    labels = [f"{r['kind']}<br>{r['model']}" for r in rows]
    fig = go.Figure()
    fig.add_bar(
        x=labels, y=[r["mha_bytes_per_token"] for r in rows], name="the same model with MHA",
        marker_color=tint(COLORS["full"], 0.3), textfont=dict(color=COLORS["full"]),
        text=[format_bytes(r["mha_bytes_per_token"]) for r in rows], textposition="outside",
        hovertemplate="%{x}<br>with MHA: %{text} per token<extra></extra>",
    )
    fig.add_bar(
        x=labels, y=[r["bytes_per_token"] for r in rows], name="what it caches",
        marker_color=COLORS["kept"],
        text=[format_bytes(r["bytes_per_token"]) for r in rows], textposition="outside",
        hovertemplate="%{x}<br>cached: %{text} per token<extra></extra>",
    )
    fig.update_yaxes(type="log", title="bytes per token (all layers)", showticklabels=False)
    fig.update_layout(barmode="group", bargap=0.25, uniformtext_minsize=9)
    return style(fig, height=360, title="KV cache per token: what each kind of attention keeps (log scale)")


def estimate_rows(estimates) -> list[dict]:
    """Table rows for a list of calculator Estimates."""
    rows = []
    for e in estimates:
        row = {
            "model": e.display, "attention": e.attention, "cache": e.dtype,
            "per token": format_bytes(e.bytes_per_token), "per sequence": format_bytes(e.bytes_per_sequence),
            f"batch of {e.batch}": format_bytes(e.bytes_total),
            "weights": format_bytes(e.weights_bytes) + f" ({e.weights_dtype})" if e.weights_bytes else "unknown",
        }
        if e.gpu:
            row[f"sequences on one {e.gpu}"] = e.max_sequences
        rows.append(row)
    return rows


# the offload mode's parts, bottom to top: (label, colour, {bar: the estimate's field})
OFFLOAD_PARTS = [
    ("keys and values on the device", COLORS["full"], {"plain cache on the device": "full_bytes", "offload: on the device": "whole_layer_bytes"}),
    ("summaries", COLORS["bookkeeping"], {"offload: on the device": "summary_bytes"}),
    ("read-set buffers", COLORS["read"], {"offload: on the device": "read_buffer_bytes"}),
    ("offloaded to host memory", tint(COLORS["full"], 0.35), {"offload: on the host": "host_bytes"}),
    ("read set moved per step", COLORS["values"], {"offload: moved per step": "read_buffer_moved"}),
    ("SparQ's r key components moved per step", COLORS["keys"], {"offload: moved per step": "sparq_key_bytes"}),
]
OFFLOAD_BARS = ["plain cache on the device", "offload: on the device", "offload: on the host", "offload: moved per step"]
OFFLOAD_TICKS = dict(zip(OFFLOAD_BARS, ["plain", "device", "host", "moved"]))


def _offload_value(e, name: str) -> int:
    return e.moved_bytes - e.sparq_key_bytes if name == "read_buffer_moved" else getattr(e, name)


def offload_figure(estimates) -> go.Figure:
    """Per architecture and dtype (OffloadEstimates), stacked bars of one sequence's bytes: the
    plain cache on the device; the offload mode's device part (summaries, read-set buffers, layers
    kept whole), its host part and what each decode step moves."""
    models = [f"{e.display} · {e.dtype}" for e in estimates]
    top = max([max(e.full_bytes, e.device_bytes, e.host_bytes, e.moved_bytes) for e in estimates] + [1])
    scale, unit = byte_unit(top)
    x = [[m for m in models for _ in OFFLOAD_BARS], [OFFLOAD_TICKS[b] for _ in models for b in OFFLOAD_BARS]]
    fig = go.Figure()
    for label, color, fields in OFFLOAD_PARTS:
        values = [_offload_value(e, fields[b]) if b in fields else 0 for e in estimates for b in OFFLOAD_BARS]
        if not any(values):
            continue
        fig.add_bar(
            x=x, y=[v / scale for v in values], name=label, marker_color=color,
            customdata=[format_bytes(v) for v in values],
            hovertemplate=f"%{{x}}<br>{label}: %{{customdata}}<extra></extra>",
        )
    totals = [v for e in estimates for v in (e.full_bytes, e.device_bytes, e.host_bytes, e.moved_bytes)]  # OFFLOAD_BARS' order
    fig.add_scatter(
        x=x, y=[t / scale for t in totals], mode="text", text=[format_bytes(t) for t in totals],
        textposition="top center", showlegend=False, hoverinfo="skip",
    )
    fig.update_yaxes(title=f"one sequence ({unit})", range=[0, top / scale * 1.12])
    fig.update_xaxes(tickangle=0, title="plain: the whole cache on the device · offloaded: on the device, on the host, moved per decode step")
    fig.update_layout(barmode="stack", bargap=0.3, legend=dict(traceorder="normal"))
    e0 = estimates[0] if estimates else None
    what = f"{e0.method}, {e0.read_entries:,} entries read per layer and KV head, {e0.context:,} tokens" if e0 else ""
    return style(fig, height=460, title=f"Cache offloaded to host memory with a retrieval summary ({what})")


def offload_rows(estimates) -> list[dict]:
    """Table rows for a list of OffloadEstimates."""
    rows = []
    for e in estimates:
        row = {
            "model": e.display, "attention": e.attention, "cache": e.dtype,
            "plain cache (device)": format_bytes(e.full_bytes), "offload: device": format_bytes(e.device_bytes),
            "summaries": format_bytes(e.summary_bytes) if e.method != "sparq" else f"none ({format_bytes(e.sparq_key_bytes)} of r components moved)",
            "host": format_bytes(e.host_bytes), "moved per step": format_bytes(e.moved_bytes),
            f"batch of {e.batch} over {e.link_gbps:g} GB/s": f"{e.link_ms:.3f} ms",
        }
        if e.gpu:
            row["same bytes from HBM"] = f"{e.hbm_ms:.3f} ms"
            row["plain cache from HBM"] = f"{e.full_hbm_ms:.3f} ms"
            row[f"sequences on one {e.gpu}: plain"] = e.max_sequences_full
            row["offloaded"] = e.max_sequences_offload
        rows.append(row)
    return rows
