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
