"""Tradeoffs of a sweep: memory against quality, one line per policy (a Pareto chart), the
passkey grid as one heatmap per policy, the best policy within a memory limit, and the sweep's
standalone HTML report.

Rows are plain dicts (``SweepRow.to_dict()``): nothing here imports torch. One series colour per
policy (``style.series_color``), the full cache always ``COLORS["full"]``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvviz.charts.style import COLORS, WHITE, series_color, style
from kvviz.charts.token_map import plotly_text
from kvviz.record.metrics import byte_unit, format_bytes
from kvviz.record.report import Report
from kvviz.sweep.rows import rows_frame
from kvviz.i18n import N_, _

Row = Mapping[str, object]

METRICS = {  # name -> (axis title, N_-marked: shown with _(), lower is better, log axis)
    "ppl": (N_("perplexity of the continuation"), True, True),
    "kl_full": (N_("mean KL(full ‖ policy), nats"), True, False),
    "top1_agree": (N_("top-1 agreement with the full cache"), False, False),
}
MEMORY = {"pct": N_("KV cache held at the end, % of the full cache"), "bytes": N_("KV cache held at the end")}
GOAL = {  # metric -> the chart's title (lower or higher is better)
    "ppl": N_("Memory against perplexity of the continuation: lower left is better"),
    "kl_full": N_("Memory against mean KL(full ‖ policy): lower left is better"),
    "top1_agree": N_("Memory against top-1 agreement with the full cache: upper left is better"),
}
FULL = "full"


def series_of(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Rows grouped by series (policy and parameters), in order of first appearance."""
    out: dict[str, list[Row]] = {}
    for row in rows:
        out.setdefault(str(row["series"]), []).append(row)
    return out


def series_colors(names: Sequence[str]) -> dict[str, str]:
    """One colour per series; the full cache in its own colour, not taking a series slot."""
    colors, i = {}, 0
    for name in names:
        if name == FULL:
            colors[name] = COLORS["full"]
        else:
            colors[name] = series_color(i)
            i += 1
    return colors


def _x(row: Row, memory: str, scale: float) -> float:
    return float(row["kv_pct"]) if memory == "pct" else float(row["kv_bytes"]) / scale


def _hover(row: Row) -> str:
    budget = _("no limit") if row.get("budget") is None else _("{n} entries per head").format(n=row["budget"])
    ratio = "" if row.get("ratio") is None else _(" (ratio {ratio})").format(ratio=f"{row['ratio']:g}")
    return plotly_text(
        f"{row['series']}\n" + _("budget: {budget}").format(budget=budget) + ratio + "\n"
        + _("KV held: {bytes} ({pct}%), peak {peak}").format(
            bytes=format_bytes(float(row["kv_bytes"])), pct=f"{float(row['kv_pct']):.1f}", peak=format_bytes(float(row["kv_bytes_peak"])))
        + f"\nppl {float(row['ppl']):.3f} · KL {float(row['kl_full']):.4f} · top-1 {float(row['top1_agree']):.0%}"
    )


def pareto_figure(
    rows: Sequence[Row], metric: str = "ppl", memory: str = "pct", reference: Mapping | None = None, selected: Sequence[int] | None = None,
) -> go.Figure:
    """Memory held (x) against ``metric`` (y): one line per policy through its ratios, stores
    and fixed points as single markers; the full cache a star at 100% (from a ``full`` row, or
    else from the sweep's ``reference``) with a dashed line at its value.

    Every point of a row carries the row's index in ``rows`` as its customdata (a click or a box
    on the chart names rows); ``selected`` (indices in ``rows``) draws those points selected and
    the others faded, as plotly draws its own selection."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}")
    title, lower_better, log_y = METRICS[metric]
    index = {id(r): i for i, r in enumerate(rows)}
    chosen = None if selected is None else set(selected)

    def picked(group) -> dict:
        if chosen is None:
            return {}
        return dict(selectedpoints=[k for k, r in enumerate(group) if index[id(r)] in chosen], selected=dict(marker=dict(size=14)), unselected=dict(marker=dict(opacity=0.35)))

    groups = series_of(rows)
    colors = series_colors(list(groups))
    full_bytes = max([float(r["kv_bytes_full"]) for r in rows] + [float((reference or {}).get("kv_bytes_full", 0))], default=0.0)
    scale, unit = byte_unit(full_bytes)
    fig = go.Figure()
    for name, group in groups.items():
        if name == FULL:
            continue
        group = sorted(group, key=lambda r: float(r["kv_bytes"]))
        fig.add_scatter(
            x=[_x(r, memory, scale) for r in group], y=[float(r[metric]) for r in group],
            mode="lines+markers" if len(group) > 1 else "markers", name=plotly_text(name),
            line=dict(color=colors[name], width=2), marker=dict(color=colors[name], size=9),
            hovertext=[_hover(r) for r in group], hovertemplate="%{hovertext}<extra></extra>",
            customdata=[index[id(r)] for r in group], **picked(group),
        )
    full_point = _full_point(groups.get(FULL), reference, metric, memory, scale)
    if full_point is not None:
        x, y, hover = full_point
        full_rows = groups.get(FULL, [])[:1]  # the reference is no row: nothing to open
        fig.add_scatter(
            x=[x], y=[y], mode="markers", name=_("full cache"), marker=dict(color=COLORS["full"], size=15, symbol="star"),
            hovertext=[hover], hovertemplate="%{hovertext}<extra></extra>",
            customdata=[index[id(r)] for r in full_rows] or [None], **(picked(full_rows) if full_rows else {}),
        )
        fig.add_hline(y=y, line=dict(color=COLORS["full"], dash="dash", width=1))
    fig.update_xaxes(title=_(MEMORY[memory]) + ("" if memory == "pct" else f" ({unit})"), rangemode="tozero", ticksuffix="%" if memory == "pct" else "")
    fig.update_yaxes(title=_(title), type="log" if log_y else "linear", tickformat=".0%" if metric == "top1_agree" else None)
    ys = [v for t in fig.data for v in t.y if v is not None and math.isfinite(v) and v > 0]
    if log_y and ys:
        ticks = log_ticks(min(ys), max(ys))
        fig.update_yaxes(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks], range=[math.log10(ticks[0]) - 0.02, math.log10(ticks[-1]) + 0.02])
    return style(fig, height=460, title=_(GOAL[metric]))


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks at 1, 2 and 5 times the powers of ten that cover [lo, hi], one below and one above."""
    ticks = [m * 10.0**e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)]
    below = [t for t in ticks if t <= lo][-1:]
    above = [t for t in ticks if t >= hi][:1]
    return below + [t for t in ticks if lo < t < hi] + above


def _full_point(full_rows, reference, metric, memory, scale):
    """(x, y, hover) of the full cache: its row when the sweep ran it, else the reference."""
    if full_rows:
        row = full_rows[0]
        return _x(row, memory, scale), float(row[metric]), _hover(row)
    if not reference or not math.isfinite(float(reference.get("ppl", math.nan))):
        return None
    # the reference against itself: KL 0 and top-1 agreement 1 by definition
    y = {"ppl": float(reference["ppl"]), "kl_full": 0.0, "top1_agree": 1.0}[metric]
    x = 100.0 if memory == "pct" else float(reference["kv_bytes_full"]) / scale
    hover = plotly_text(_("full cache (reference)") + "\n" + _("KV held: {bytes} (100%)").format(bytes=format_bytes(float(reference["kv_bytes_full"])))
                        + f"\nppl {float(reference['ppl']):.3f}")
    return x, y, hover


# ------------------------------------------------------------------------------ passkey


def passkey_grid(rows: Sequence[Row]) -> dict[str, dict]:
    """Per series: depths (x), row labels (y: filler length, and the budget when a series has
    several), found as 1/0 (z, NaN where not run) and the answers, for one heatmap each."""
    out = {}
    for name, group in series_of(rows).items():
        depths = sorted({float(r["depth"]) for r in group})
        several = len({r.get("budget") for r in group}) > 1
        ys: list[tuple] = []
        for r in group:
            key = (int(r["length"]), r.get("budget") if several else None, r.get("ratio") if several else None)
            if key not in ys:
                ys.append(key)
        ys.sort(key=lambda k: (k[0], -1 if k[1] is None else k[1]))
        z = [[math.nan] * len(depths) for _ in ys]
        answers = [[""] * len(depths) for _ in ys]
        for r in group:
            key = (int(r["length"]), r.get("budget") if several else None, r.get("ratio") if several else None)
            i, j = ys.index(key), depths.index(float(r["depth"]))
            z[i][j] = 1.0 if r["found"] else 0.0
            answers[i][j] = str(r["answer"])
        labels = [_("{n} tok").format(n=length) + ("" if budget is None else _(" · {budget}/head").format(budget=budget)) for length, budget, _r in ys]
        out[name] = {"depths": depths, "labels": labels, "z": z, "answers": answers}
    return out


def passkey_figure(rows: Sequence[Row], columns: int = 3) -> go.Figure:
    """One heatmap per policy: filler length (rows) by needle depth (columns), blue where the
    key was found, vermillion where it was not; the answer on hover."""
    grids = passkey_grid(rows)
    names = list(grids) or [_("(no rows)")]
    n_cols = min(columns, len(names))
    n_rows = math.ceil(len(names) / n_cols)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[plotly_text(n) for n in names], horizontal_spacing=0.08, vertical_spacing=0.25 / n_rows)
    scale = [[0.0, COLORS["differ"]], [0.5, COLORS["differ"]], [0.5, COLORS["agree"]], [1.0, COLORS["agree"]]]
    for k, (name, grid) in enumerate(grids.items()):
        found, missed = _("found"), _("missed")
        text = [[found if v == 1.0 else missed if v == 0.0 else "" for v in row] for row in grid["z"]]
        hover = [[plotly_text(f"{name}\n" + _("{label}, depth {depth}").format(label=label, depth=f"{d:g}") + "\n"
                              + _("answer: {answer}").format(answer=a)) for d, a in zip(grid["depths"], answers)]
                 for label, answers in zip(grid["labels"], grid["answers"])]
        fig.add_trace(
            go.Heatmap(
                z=grid["z"], x=[f"{d:g}" for d in grid["depths"]], y=grid["labels"], text=text, texttemplate="%{text}",
                hovertext=hover, hovertemplate="%{hovertext}<extra></extra>", zmin=0, zmax=1, colorscale=scale,
                showscale=False, xgap=3, ygap=3, textfont=dict(color=WHITE),
            ),
            row=k // n_cols + 1, col=k % n_cols + 1,
        )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    fig = style(fig, height=80 + 220 * n_rows, title=_("Pass key found (blue) or missed (vermillion): filler length by needle depth"))
    fig.update_layout(margin=dict(t=90))
    return fig


# ------------------------------------------------------------------------------ answers, report


def best_within(rows: Sequence[Row], max_pct: float, metric: str = "ppl") -> Row | None:
    """The row that holds at most ``max_pct`` % of the full cache's bytes with the best
    ``metric`` (lowest perplexity or KL, highest top-1), or None when no row fits."""
    fits = [r for r in rows if r.get("series") != FULL and float(r["kv_pct"]) <= max_pct and math.isfinite(float(r[metric]))]
    if not fits:
        return None
    sign = 1.0 if METRICS[metric][1] else -1.0
    return min(fits, key=lambda r: (sign * float(r[metric]), float(r["kv_bytes"])))


def describe_best(row: Row, metric: str, reference: Mapping | None, limit: float) -> str:
    """One sentence (plain text) answering: which policy is best within ``limit`` % of the full
    cache's memory, and what does it cost?"""
    best = {"ppl": _("the lowest perplexity"), "kl_full": _("the lowest KL to the full cache"),
            "top1_agree": _("the highest top-1 agreement")}[metric]
    parts = ([_("ratio {ratio}").format(ratio=f"{row['ratio']:g}")] if row.get("ratio") is not None else []) + (
        [_("{budget} entries per KV head").format(budget=row["budget"])] if row.get("budget") is not None else [])
    where = _(" ({details})").format(details=_(", ").join(parts)) if parts else ""
    ppl = f"{float(row['ppl']):.2f}"
    if reference and math.isfinite(float(reference.get("ppl", math.nan))):
        full = float(reference["ppl"])
        cost = _("perplexity {ppl} against {full} for the full cache ({change}%)").format(
            ppl=ppl, full=f"{full:.2f}", change=f"{100 * (float(row['ppl']) / full - 1):+.1f}")
    else:
        cost = _("perplexity {ppl}").format(ppl=ppl)
    return _("Within {limit}% of the full cache's memory, {best} is {series} at {pct}%{where}: "
             "{cost}, mean KL {kl} nats, top-1 agreement {top1}.").format(
        limit=f"{limit:g}", best=best, series=row["series"], pct=f"{float(row['kv_pct']):.1f}", where=where, cost=cost,
        kl=f"{float(row['kl_full']):.3f}", top1=f"{float(row['top1_agree']):.0%}")


def sweep_report(result: Mapping) -> Report:
    """A standalone HTML report of a sweep (``SweepResult.to_dict()``): its settings, the charts
    and the table."""
    settings = dict(result["settings"])
    task, rows = settings["task"], result["rows"]
    report = Report(
        f"kvviz sweep: {'perplexity' if task == 'ppl' else 'passkey retrieval'}",
        intro=f"{result.get('model', '')} on {result.get('device', '')} ({result.get('dtype', '')}), "
        f"{len(rows)} runs in {float(result.get('seconds', 0)):.1f} s" + (" (stopped early)" if result.get("stopped") else "") + ".",
        settings=settings | {"reference (full cache)": result.get("reference")},
    )
    if task == "ppl":
        for metric in METRICS:
            title = _(METRICS[metric][0])
            report.add(title[0].upper() + title[1:], pareto_figure(rows, metric, "pct", result.get("reference")))
    else:
        report.add("Passkey grid", passkey_figure(rows))
    return report.add("Table", rows_frame(rows, task))
