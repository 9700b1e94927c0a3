"""Clicks on plotly charts shown with ``st.plotly_chart(on_select="rerun")``."""

from __future__ import annotations

import streamlit as st


def clicked(chart_key: str) -> list | int | None:
    """customdata of the point just clicked in the chart with key ``chart_key``, once per click
    (a rerun that is not a new click returns None)."""
    ss = st.session_state
    event = ss.get(chart_key)
    points = (event or {}).get("selection", {}).get("points", [])
    marker = repr([p.get("customdata") for p in points])
    if not points or ss.get(chart_key + ".seen") == marker:
        return None
    ss[chart_key + ".seen"] = marker
    return points[0].get("customdata")


def new_selection(chart_key: str) -> dict | None:
    """The selection of the chart with key ``chart_key`` when it changed since this function last
    saw it (a click, a box or a lasso; an emptied selection too, as ``{}``), else None."""
    ss = st.session_state
    selection = (ss.get(chart_key) or {}).get("selection") or {}
    marker = repr([(p.get("curve_number"), p.get("point_index"), p.get("x")) for p in selection.get("points", [])]) + repr(selection.get("box") or [])
    if ss.get(chart_key + ".seen_selection", "[][]") == marker:  # a chart not yet used reads as an empty selection
        return None
    ss[chart_key + ".seen_selection"] = marker
    return dict(selection)


def selected_steps(chart_key: str) -> tuple[int, int] | None:
    """(first, last) step of a new selection on a chart whose x axis is the step (a click: one
    step; a box: the steps of the points in it), once per selection; None otherwise. The caller
    clamps them to the steps it has."""
    selection = new_selection(chart_key)
    if not selection:
        return None
    xs = [float(p["x"]) for p in selection.get("points", []) if isinstance(p.get("x"), (int, float))]
    if not xs:  # a box over no point: the steps it spans
        xs = [float(x) for box in selection.get("box", []) or [] for x in box.get("x", []) if isinstance(x, (int, float))]
    if not xs:
        return None
    return max(0, round(min(xs))), max(0, round(max(xs)))
