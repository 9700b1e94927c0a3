"""Figures and tables of the memory calculator: KV memory against context for several
architectures and cache dtypes with the GPU's room after the weights, and the four kinds of
attention side by side. Pure: numbers in, plotly figures out (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from kvviz.charts.style import COLORS, series_color, style, tint
from kvviz.i18n import N_, _
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
            hovertemplate=f"{c.model} · {c.dtype}<br>" + _("{n} tokens: {bytes}").format(n="%{x:,}", bytes="%{customdata}") + "<extra></extra>",
        )
    for i, (model, room) in enumerate(rooms.items()):
        if room is None or room <= 0:
            continue
        color = series_color(models.index(model)) if model in models else COLORS["limit"]
        fig.add_hline(
            y=room / scale, line=dict(color=color, dash="dot", width=1.5),
            annotation_text=_("{gpu}: {bytes} left after the {model} weights").format(gpu=gpu, bytes=format_bytes(room), model=model),
            annotation_position="top left" if i % 2 == 0 else "bottom right", annotation_font=dict(color=color, size=11),
        )
    fig.add_vline(x=context, line=dict(color=COLORS["highlight"], width=1, dash="dash"))
    ticks = [t for t in 2 ** np.arange(7, 24) if curves and t <= max(c.contexts.max() for c in curves)]
    fig.update_xaxes(type="log", title=_("context (tokens per sequence)"), tickvals=ticks, ticktext=[context_label(t) for t in ticks])
    kv = _("KV cache of 1 sequence ({unit})") if batch == 1 else _("KV cache of {n} sequences ({unit})")
    fig.update_yaxes(title=kv.format(n=batch, unit=unit), rangemode="tozero")
    what = _("batch {n}").format(n=batch) if batch > 1 else _("one sequence")
    return style(fig, height=420, title=_("KV cache memory against context ({what}); dotted: room on the GPU after the weights").format(what=what))


def attention_kinds_figure(rows: list[dict]) -> go.Figure:
    """Bytes per token of MHA, GQA, MQA and MLA models beside what each would cache with plain MHA.
    rows: {"kind", "model", "bytes_per_token", "mha_bytes_per_token"} (log scale: they span 200×)."""
    labels = [f"{r['kind']}<br>{r['model']}" for r in rows]
    fig = go.Figure()
    fig.add_bar(
        x=labels, y=[r["mha_bytes_per_token"] for r in rows], name=_("the same model with MHA"),
        marker_color=tint(COLORS["full"], 0.3), textfont=dict(color=COLORS["full"]),
        text=[format_bytes(r["mha_bytes_per_token"]) for r in rows], textposition="outside",
        hovertemplate="%{x}<br>" + _("with MHA: {bytes} per token").format(bytes="%{text}") + "<extra></extra>",
    )
    fig.add_bar(
        x=labels, y=[r["bytes_per_token"] for r in rows], name=_("what it caches"),
        marker_color=COLORS["kept"],
        text=[format_bytes(r["bytes_per_token"]) for r in rows], textposition="outside",
        hovertemplate="%{x}<br>" + _("cached: {bytes} per token").format(bytes="%{text}") + "<extra></extra>",
    )
    fig.update_yaxes(type="log", title=_("bytes per token (all layers)"), showticklabels=False)
    fig.update_layout(barmode="group", bargap=0.25, uniformtext_minsize=9)
    return style(fig, height=360, title=_("KV cache per token: what each kind of attention keeps (log scale)"))


def estimate_rows(estimates) -> list[dict]:
    """Table rows for a list of calculator Estimates."""
    rows = []
    for e in estimates:
        row = {
            _("model"): e.display, _("attention"): e.attention, _("cache"): e.dtype,
            _("per token"): format_bytes(e.bytes_per_token), _("per sequence"): format_bytes(e.bytes_per_sequence),
            _("batch of {n}").format(n=e.batch): format_bytes(e.bytes_total),
            _("weights"): format_bytes(e.weights_bytes) + f" ({e.weights_dtype})" if e.weights_bytes else _("unknown"),
        }
        if e.gpu:
            row[_("sequences on one {gpu}").format(gpu=e.gpu)] = e.max_sequences
        rows.append(row)
    return rows


# the offload mode's parts, bottom to top: (label, colour, {bar: the estimate's field})
OFFLOAD_PARTS = [
    (N_("keys and values on the device"), COLORS["full"], {"plain cache on the device": "full_bytes", "offload: on the device": "whole_layer_bytes"}),
    (N_("summaries"), COLORS["bookkeeping"], {"offload: on the device": "summary_bytes"}),
    (N_("read-set buffers"), COLORS["read"], {"offload: on the device": "read_buffer_bytes"}),
    (N_("offloaded to host memory"), tint(COLORS["full"], 0.35), {"offload: on the host": "host_bytes"}),
    (N_("read set moved per step"), COLORS["values"], {"offload: moved per step": "read_buffer_moved"}),
    (N_("SparQ's r key components moved per step"), COLORS["keys"], {"offload: moved per step": "sparq_key_bytes"}),
]
OFFLOAD_BARS = ["plain cache on the device", "offload: on the device", "offload: on the host", "offload: moved per step"]
OFFLOAD_TICKS = dict(zip(OFFLOAD_BARS, [N_("plain"), N_("device"), N_("host"), N_("moved")]))
# the names of a calculator's formulas (kvviz.calculator: Estimate.formulas, OffloadEstimate.formulas)
FORMULAS = {
    "per_token": N_("per token"), "per_sequence": N_("per sequence"), "total": N_("total"), "fit": N_("fit"),
    "read_set": N_("read set"), "device": N_("device"), "moved": N_("moved"), "link": N_("link"), "hbm": N_("hbm"),
}
# the check's row fields (kvviz.calculator.check.CacheCheck.rows) as column headers
CHECK_COLUMNS = {"step": N_("step"), "tokens held": N_("tokens held"), "measured bytes": N_("measured bytes"),
                 "calculated bytes": N_("calculated bytes")}


def formula_lines(formulas: dict[str, str]) -> str:
    """An estimate's formulas, one "name: formula" a line, the names in the session's language."""
    return "\n".join(_("{name}: {formula}").format(name=_(FORMULAS[k]) if k in FORMULAS else k.replace("_", " "), formula=v)
                     for k, v in formulas.items())


def check_columns() -> dict[str, str]:
    """The check's row fields as the page's column headers (rows keep their English fields)."""
    return {field: _(name) for field, name in CHECK_COLUMNS.items()}


def _offload_value(e, name: str) -> int:
    return e.moved_bytes - e.sparq_key_bytes if name == "read_buffer_moved" else getattr(e, name)


def offload_figure(estimates) -> go.Figure:
    """Per architecture and dtype (OffloadEstimates), stacked bars of one sequence's bytes: the
    plain cache on the device; the offload mode's device part (summaries, read-set buffers, layers
    kept whole), its host part and what each decode step moves."""
    models = [f"{e.display} · {e.dtype}" for e in estimates]
    top = max([max(e.full_bytes, e.device_bytes, e.host_bytes, e.moved_bytes) for e in estimates] + [1])
    scale, unit = byte_unit(top)
    x = [[m for m in models for _bar in OFFLOAD_BARS], [_(OFFLOAD_TICKS[b]) for _model in models for b in OFFLOAD_BARS]]
    fig = go.Figure()
    for label, color, fields in OFFLOAD_PARTS:
        values = [_offload_value(e, fields[b]) if b in fields else 0 for e in estimates for b in OFFLOAD_BARS]
        if not any(values):
            continue
        fig.add_bar(
            x=x, y=[v / scale for v in values], name=_(label), marker_color=color,
            customdata=[format_bytes(v) for v in values],
            hovertemplate=f"%{{x}}<br>{_(label)}: %{{customdata}}<extra></extra>",
        )
    totals = [v for e in estimates for v in (e.full_bytes, e.device_bytes, e.host_bytes, e.moved_bytes)]  # OFFLOAD_BARS' order
    fig.add_scatter(
        x=x, y=[t / scale for t in totals], mode="text", text=[format_bytes(t) for t in totals],
        textposition="top center", showlegend=False, hoverinfo="skip",
    )
    fig.update_yaxes(title=_("one sequence ({unit})").format(unit=unit), range=[0, top / scale * 1.12])
    fig.update_xaxes(tickangle=0, title=_("plain: the whole cache on the device · offloaded: on the device, on the host, moved per decode step"))
    fig.update_layout(barmode="stack", bargap=0.3, legend=dict(traceorder="normal"))
    e0 = estimates[0] if estimates else None
    what = _("{method}, {k} entries read per layer and KV head, {n} tokens").format(
        method=e0.method, k=f"{e0.read_entries:,}", n=f"{e0.context:,}") if e0 else ""
    return style(fig, height=460, title=_("Cache offloaded to host memory with a retrieval summary ({what})").format(what=what))


def offload_answer(estimates, context: int) -> str:
    """Markdown: how many requests of ``context`` tokens fit on the GPU offloaded and plain, and the
    time each decode step's moves take (OffloadEstimates with a GPU)."""
    lines = [
        f"- **{e.display}** · {e.dtype}: " + _(
            "**{offloaded}** offloaded, **{plain}** with the plain cache; each step moves {bytes} for the batch: {link_ms} ms "
            "over {gbps} GB/s (from HBM: {hbm_ms} ms; the whole plain cache from HBM: {full_ms} ms)"
        ).format(offloaded=f"{e.max_sequences_offload:,}", plain=f"{e.max_sequences_full:,}", bytes=format_bytes(e.moved_batch_bytes),
                 link_ms=f"{e.link_ms:.2f}", gbps=f"{e.link_gbps:g}", hbm_ms=f"{e.hbm_ms:.3f}", full_ms=f"{e.full_hbm_ms:.3f}")
        for e in estimates
    ]
    head = _("Requests of {n} tokens that fit at once on one {gpu}:").format(n=f"{context:,}", gpu=estimates[0].gpu)
    return head + "\n" + "\n".join(lines)


def offload_rows(estimates) -> list[dict]:
    """Table rows for a list of OffloadEstimates."""
    rows = []
    for e in estimates:
        row = {
            _("model"): e.display, _("attention"): e.attention, _("cache"): e.dtype,
            _("plain cache (device)"): format_bytes(e.full_bytes), _("offload: device"): format_bytes(e.device_bytes),
            _("summaries"): format_bytes(e.summary_bytes) if e.method != "sparq"
            else _("none ({bytes} of r components moved)").format(bytes=format_bytes(e.sparq_key_bytes)),
            _("host"): format_bytes(e.host_bytes), _("moved per step"): format_bytes(e.moved_bytes),
            _("batch of {n} over {gbps} GB/s").format(n=e.batch, gbps=f"{e.link_gbps:g}"): f"{e.link_ms:.3f} ms",
        }
        if e.gpu:
            row[_("same bytes from HBM")] = f"{e.hbm_ms:.3f} ms"
            row[_("plain cache from HBM")] = f"{e.full_hbm_ms:.3f} ms"
            row[_("sequences on one {gpu}: plain").format(gpu=e.gpu)] = e.max_sequences_full
            row[_("offloaded")] = e.max_sequences_offload
        rows.append(row)
    return rows
