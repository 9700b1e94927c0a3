"""A one-line text alternative for any figure: what it shows, read from the figure itself.

A screen reader cannot read a plotly chart; the pages put this line next to every chart (hidden
from the eye, read aloud; ``kvviz.ui.charts``). It says the kind of chart, its title, what its
axes measure and which series it draws, so "K/V bytes per step" is said, not "image".
"""

from __future__ import annotations

import re

import plotly.graph_objects as go

from kvviz.i18n import N_, _

_TAG = re.compile(r"<[^>]+>")
_KINDS = {"scatter": N_("line chart"), "scattergl": N_("scatter plot"), "bar": N_("bar chart"), "heatmap": N_("heatmap"),
          "box": N_("box plot"), "histogram": N_("histogram"), "table": N_("table"), "pie": N_("pie chart")}
CHART, SCATTER = N_("chart"), N_("scatter plot")
MAX_SERIES = 8  # named series listed; more are counted


def plain(text: object) -> str:
    """Plotly label text (may hold <br>, <b>, <sup>) as plain one-line text: a subtitle
    (``<br><sup>``) after " · ", a line broken inside one (``<br>``) joined with a space."""
    text = str(text or "").replace("<br><sup>", " · <sup>").replace("<br>", " ")
    return " ".join(_TAG.sub(" ", text).split())


def _kind(fig: go.Figure) -> str:
    kinds = []
    for trace in fig.data:
        kind = _KINDS.get(trace.type, CHART)
        if trace.type == "scatter" and (trace.mode or "").startswith("markers"):
            kind = SCATTER
        if kind not in kinds:
            kinds.append(kind)
    if len(kinds) > 1:
        return _("{one} and {other}").format(one=_(kinds[0]), other=_(kinds[1]))
    return _(kinds[0]) if kinds else _(CHART)


def _axes(fig: go.Figure) -> str:
    layout = fig.layout
    names = []
    for axis in ("xaxis", "yaxis"):
        obj = getattr(layout, axis, None)
        if obj is None or obj.visible is False:
            continue
        text = plain(obj.title.text) if obj.title is not None else ""
        if text:
            names.append(f"{axis[0]}: {text}")
    return _("; ").join(names)


def _series(fig: go.Figure) -> str:
    names = []
    for trace in fig.data:
        name = plain(trace.name)
        if name and trace.showlegend is not False and name not in names:
            names.append(name)
    if not names:
        return ""
    more = _(" and {n} more").format(n=len(names) - MAX_SERIES) if len(names) > MAX_SERIES else ""
    return _("series: {names}").format(names=_(", ").join(names[:MAX_SERIES]) + more)


def describe(fig: go.Figure, what: str | None = None) -> str:
    """``"<kind>: <what or the title>. x: ...; y: .... series: a, b."``, one line of plain text
    (escape it before it goes into HTML)."""
    title = plain(what) if what else plain(fig.layout.title.text if fig.layout.title is not None else "")
    kind = _kind(fig)
    parts = [kind[:1].upper() + kind[1:] + (_(": {title}").format(title=title) if title else "")]
    for part in (_axes(fig), _series(fig)):
        if part:
            parts.append(part)
    return _(". ").join(parts) + _(".")
