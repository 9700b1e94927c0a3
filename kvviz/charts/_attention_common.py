"""Shared by the attention figures (``attention_overview``, ``attention_detail``): colours and the
colour scale.

Colour: attention is shown on a log10 scale by default (weights span five orders of magnitude
at long contexts); ``scale="linear"`` shows it as is. Cells a query cannot see (keys after it)
are drawn in a light grey "causal mask" trace; evicted keys in greys instead of colour.
"""

from __future__ import annotations

import numpy as np

from kvviz.charts.style import COLORS
from kvviz.i18n import N_, _

COLORSCALE = "Viridis"
MASK_COLOR = COLORS["masked"]
HIGHLIGHT = COLORS["highlight_on_map"]
LOG_FLOOR = -5.0  # log10 of the smallest weight shown in colour
POOL_NAMES = {"max": N_("max"), "mean": N_("mean")}  # a pooling's value -> the name shown
SCALE_NAMES = {"log": N_("log"), "linear": N_("linear")}  # a colour scale's value -> the name shown


def pool_name(pool: str) -> str:
    """How a pooling (``"max"``, ``"mean"``) is named on the page, in the session's language."""
    return _(POOL_NAMES[pool]) if pool in POOL_NAMES else pool


def scale_name(scale: str) -> str:
    """How a colour scale (``"log"``, ``"linear"``) is named on the page, in the session's language."""
    return _(SCALE_NAMES[scale]) if scale in SCALE_NAMES else scale


def color_values(values: np.ndarray, scale: str = "log") -> np.ndarray:
    """What the colour encodes: log10 of the weight (floored at ``LOG_FLOOR``) or the weight."""
    values = np.asarray(values, dtype=np.float64)
    if scale == "linear":
        return values
    if scale != "log":
        raise ValueError(f"scale must be 'log' or 'linear', not {scale!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isnan(values), np.nan, np.log10(np.maximum(values, 10**LOG_FLOOR)))


def _colorbar(scale: str, title: str | None = None) -> dict:
    title = _("attention") if title is None else title
    if scale == "log":
        exps = list(range(int(LOG_FLOOR), 1))
        return dict(title=title, tickvals=exps, ticktext=[f"1e{e}" if e else "1" for e in exps], thickness=12)
    return dict(title=title, thickness=12)


def _color_range(scale: str) -> tuple[float, float]:
    return (LOG_FLOOR, 0.0) if scale == "log" else (0.0, 1.0)
