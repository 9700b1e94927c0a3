"""Figures of the quantization lab: the magnitudes of one KV head's keys and values per token and
channel (the outlier key channels), the error of per-token against per-channel quantization, the
next-token KL against the bytes stored, and KIVI's full-precision window on the real numbers.
Pure: numpy arrays and plain rows in, plotly figures out (no torch)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvviz.charts.style import COLORS, SKY, TEXT, VERMILLION, WHITE, series_color, style, tint
from kvviz.i18n import N_, _
from kvviz.record.metrics import format_bytes

AXIS_COLORS = {"per_token": VERMILLION, "per_channel": COLORS["kept"], "kivi": COLORS["generated"]}
GROUP_DASHES = {16: "solid", 32: "dash", 64: "dot", 128: "dashdot"}
SCHEME_NAMES = {"per_token": N_("per token, G={group}"), "per_channel": N_("per channel, G={group}")}  # as kvviz.quant_lab.run's
# the lab's row fields (kvviz.quant_lab.run's SchemeResult.row, NextTokenResult.row) as column headers
COLUMNS = {
    "scheme": N_("scheme"), "bits": N_("bits"), "group": N_("group"), "key error": N_("key error"),
    "value error": N_("value error"), "attention KL": N_("attention KL"), "output error": N_("output error"),
    "bytes": N_("bytes"), "of full": N_("of full"), "mean KL": N_("mean KL"), "max KL": N_("max KL"),
    "top-1 agreement": N_("top-1 agreement"), "cache bytes": N_("cache bytes"),
}
ROLES = {"key": (N_("|keys| (after RoPE, as cached)"), N_("largest |key| per channel"), N_("largest |key| of the token")),
         "value": (N_("|values|"), N_("largest |value| per channel"), N_("largest |value| of the token"))}


def table_columns() -> dict[str, str]:
    """Each row field's column header in the session's language (rows keep their English fields)."""
    return {field: _(name) for field, name in COLUMNS.items()}


def _scale(color: str) -> list:
    return [[0.0, WHITE], [1.0, color]]


def magnitude_figure(stats: dict, layer: int, head: int) -> go.Figure:
    """|K| and |V| of one KV head over tokens × channels (top), and each channel's largest |value|
    (bottom), outlier channels in vermillion."""
    fig = make_subplots(
        rows=2, cols=2, row_heights=[0.62, 0.38], vertical_spacing=0.1, horizontal_spacing=0.08,
        subplot_titles=(_(ROLES["key"][0]), _(ROLES["value"][0]), _(ROLES["key"][1]), _(ROLES["value"][1])),
    )
    for col, (role, color) in enumerate((("key", COLORS["keys"]), ("value", COLORS["values"])), start=1):
        z = stats[f"{role}_abs"]  # (n, head_dim)
        fig.add_heatmap(
            z=z, row=1, col=col, colorscale=_scale(color), showscale=False,
            hovertemplate=_("token {token}, channel {channel}<br>{what} {value}").format(
                token="%{y}", channel="%{x}", what=f"|{role}|", value="%{z:.3f}") + "<extra></extra>",
        )
        chan = stats[f"{role}_channel_max"]
        outliers = set(int(i) for i in stats[f"{role}_outliers"])
        fig.add_bar(
            x=np.arange(chan.size), y=chan, row=2, col=col, showlegend=False,
            marker_color=[VERMILLION if i in outliers else color for i in range(chan.size)],
            hovertemplate=_("channel {channel}<br>max {what} {value}").format(channel="%{x}", what=f"|{role}|", value="%{y:.3f}")
            + "<extra></extra>",
        )
        fig.update_yaxes(title_text=_("token"), autorange="reversed", row=1, col=col)
        fig.update_xaxes(title_text=_("channel"), row=2, col=col)
    k_out = ", ".join(str(int(i)) for i in stats["key_outliers"]) or _("none")
    fig.update_layout(bargap=0.1)
    return style(fig, height=620, title=_("Layer {layer}, KV head {head}: outlier key channels (> 3× the median channel's max): {channels}").format(
        layer=layer, head=head, channels=k_out))


def token_profile_figure(stats: dict) -> go.Figure:
    """The largest |key| and |value| of each token: tokens are far more alike than channels."""
    fig = go.Figure()
    for role in ("key", "value"):
        y = stats[f"{role}_token_max"]
        fig.add_scatter(
            x=np.arange(y.size), y=y, mode="lines", name=_(ROLES[role][2]), line=dict(color=COLORS[f"{role}s"]),
            hovertemplate=_("token {token}<br>max {what} {value}").format(token="%{x}", what=f"|{role}|", value="%{y:.3f}") + "<extra></extra>",
        )
    fig.update_xaxes(title=_("token position"))
    fig.update_yaxes(title=_("largest |value|"), rangemode="tozero")
    return style(fig, height=260, title=_("Per token: the largest magnitude of each token's key and value"))


def error_grid_figure(rows: list[dict]) -> go.Figure:
    """Key error, value error and attention KL against bits, one line per axis and group size.
    rows: SchemeResult.row() dicts."""
    panels = [("key error", "‖K − K̂‖ / ‖K‖"), ("value error", "‖V − V̂‖ / ‖V‖"), ("attention KL", _("KL(P ‖ P̂) per attention row"))]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[title for _field, title in panels], horizontal_spacing=0.07)
    series = {}
    for r in rows:
        series.setdefault((r["axis"], r["group"]), []).append(r)
    for (axis, group), items in series.items():
        items = sorted(items, key=lambda r: -r["bits"])
        name = _(SCHEME_NAMES[axis]).format(group=group) if axis in SCHEME_NAMES else f"{axis}, G={group}"
        for col, (field, _title) in enumerate(panels, start=1):
            fig.add_scatter(
                x=[_("{bits}-bit").format(bits=r["bits"]) for r in items], y=[max(r[field], 1e-7) for r in items], mode="lines+markers",
                name=name, legendgroup=name, showlegend=col == 1,
                line=dict(color=AXIS_COLORS[axis], dash=GROUP_DASHES.get(group, "solid")),
                customdata=[format_bytes(r["bytes"]) for r in items],
                hovertemplate=name + "<br>%{x}: %{y:.3g}<br>" + _("stored: {bytes}").format(bytes="%{customdata}") + "<extra></extra>",
                row=1, col=col,
            )
    fig.update_yaxes(type="log", dtick=1, exponentformat="power")
    style(fig, height=420, title=_("Per token (vermillion) against per channel (blue): error at 8, 4 and 2 bits (log scale)"))
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.12, x=0), margin=dict(t=70))
    return fig


def next_token_figure(rows: list[dict], full_bytes: int) -> go.Figure:
    """Mean next-token KL (log scale) against the bytes the whole cache holds, one point per scheme;
    the full cache (KL 0) as a vertical line. rows: NextTokenResult.row() dicts."""
    fig = go.Figure()
    fig.add_vline(x=full_bytes / 1024, line=dict(color=COLORS["full"], dash="dash"), annotation_text=_("full cache"), annotation_position="top left")
    for i, r in enumerate(rows):
        axis = r.get("axis") or ("kivi" if r["scheme"].startswith("KIVI") else "per_channel" if r["scheme"].startswith("per channel") else "per_token")
        name = r["scheme"] if axis == "kivi" else _("{scheme}, {bits}-bit").format(scheme=r["scheme"], bits=r["bits"])
        fig.add_scatter(
            x=[r["cache bytes"] / 1024], y=[max(r["mean KL"], 1e-7)], mode="markers", name=name,
            marker=dict(color=AXIS_COLORS.get(axis, series_color(i)), size=12, symbol={8: "circle", 4: "square", 2: "triangle-up"}.get(r["bits"], "circle")),
            hovertemplate=name + "<br>%{x:.1f} KiB<br>" + _("mean KL {kl}").format(kl="%{y:.2g}") + "<extra></extra>",
        )
    fig.update_xaxes(title=_("cache held, all layers (KiB, packed)"), rangemode="tozero")
    fig.update_yaxes(title=_("mean KL of the next token (nats)"), type="log", dtick=1, exponentformat="power")
    style(fig, height=400, title=_("What the whole model's next token pays for the bytes saved (● 8-bit, ■ 4-bit, ▲ 2-bit)"))
    fig.update_layout(legend=dict(orientation="v", yanchor="top", y=1, x=1.02))
    return fig


def _window_label(color: str, below: bool = False) -> dict:
    """A full-precision window's label: at the top of the window, where both errors are zero (no
    line to cross), right-aligned inside the plot, on a white box; the second one under the first."""
    return dict(annotation_font=dict(size=11, color=color), annotation_bgcolor="rgba(255,255,255,0.9)",
                annotation_yshift=-18 if below else 0)


def residual_window_figure(key_error: np.ndarray, value_error: np.ndarray, keys_full: int, values_full: int, residual: int) -> go.Figure:
    """Per-token error of keys and values under KIVI, with the full-precision stretches shaded:
    the R newest values, and the keys of the group of R still filling."""
    n = key_error.size
    x = np.arange(n)
    fig = go.Figure()
    if values_full:
        fig.add_vrect(x0=n - values_full - 0.5, x1=n - 0.5, fillcolor=tint(COLORS["values"], 0.12), line_width=0,
                      annotation_text=_("values in full precision"), annotation_position="top right", **_window_label(TEXT["values"]))
    if keys_full:
        fig.add_vrect(x0=n - keys_full - 0.5, x1=n - 0.5, fillcolor="rgba(0,0,0,0)", line=dict(color=COLORS["keys"], width=1.5, dash="dash"),
                      annotation_text=_("keys in full precision"), annotation_position="top right", **_window_label(TEXT["keys"], below=bool(values_full)))
    for k in range(residual, n - keys_full + 1, residual):
        fig.add_vline(x=k - 0.5, line=dict(color=SKY, width=1, dash="dot"))
    fig.add_scatter(x=x, y=key_error, mode="lines", name=_("keys (per channel, groups of R tokens)"), line=dict(color=COLORS["keys"]),
                    hovertemplate=_("token {token}<br>key error {error}").format(token="%{x}", error="%{y:.1%}") + "<extra></extra>")
    fig.add_scatter(x=x, y=value_error, mode="lines", name=_("values (per token)"), line=dict(color=COLORS["values"]),
                    hovertemplate=_("token {token}<br>value error {error}").format(token="%{x}", error="%{y:.1%}") + "<extra></extra>")
    fig.update_xaxes(title=_("token position"), range=[-0.5, n - 0.5])
    fig.update_yaxes(title=_("‖x − x̂‖ / ‖x‖ of the token"), tickformat=".0%", rangemode="tozero")
    return style(fig, height=340, title=_("KIVI with R = {residual}: the error of each token (dotted: key groups of {residual} tokens)").format(
        residual=residual))
