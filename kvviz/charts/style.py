"""kvviz's one visual language: semantic colours used by every chart and token view.

The same state has the same colour on every page. The palette is Okabe & Ito's (2008),
distinguishable with the common forms of colour blindness; no meaning rests on red against green.

- ``COLORS``: strong colours for lines, markers and outlines, by meaning.
- ``STATE_FILL`` / ``STATE_TEXT``: backgrounds and text of token chips and map cells, per token
  state (see ``kvviz.record.token_states.STATES``).
- ``SERIES``: categorical colours for several policies (or requests) on one chart; the full cache
  is always ``COLORS["full"]``, dashed.
"""

from __future__ import annotations

import plotly.graph_objects as go

# Okabe-Ito
BLACK, ORANGE, SKY, GREEN, YELLOW, BLUE, VERMILLION, PURPLE = (
    "#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
)
GREY, LIGHT_GREY, INK, WHITE = "#8C8C8C", "#E3E3E3", "#1F2937", "#FFFFFF"

COLORS: dict[str, str] = {
    # what the cache holds
    "kept": BLUE,
    "evicted": GREY,  # gone: grey everywhere
    "evicted_now": VERMILLION,  # the event of leaving, at the step in view
    "sink": PURPLE,
    "recent": SKY,
    "high_score": ORANGE,
    "partial": "#7FA9D1",  # kept by some layers/heads only
    # the sequence
    "prompt": INK,
    "generated": GREEN,  # model output, and the prompt/generated boundary
    "needle": YELLOW,  # a searched or hidden token (the passkey)
    "attention": ORANGE,  # attention weights as a tint (H2O's high score is accumulated attention)
    "measure": SKY,  # a plain measured quantity per position or step (entropy, KL)
    "muted": GREY,  # secondary text: "... 40 tokens before ..."
    "outline": "#9C9C9C",  # thin borders of chips, cells and boxes
    "masked": "#E6E6E6",  # attention cells a query cannot see (keys after it)
    # comparisons
    "full": "#4D4D4D",  # the full cache, the reference (dashed lines)
    "agree": BLUE,
    "differ": VERMILLION,  # also the first divergence
    "highlight": BLACK,  # the selected step, token, head: outlines and rules
    "highlight_on_map": "#FF2D55",  # the same on a Viridis heatmap, visible on its dark and light ends
    # stores
    "keys": BLUE,
    "values": ORANGE,
    "quantized": SKY,
    "full_precision": ORANGE,
    "bookkeeping": PURPLE,
    # paged blocks
    "free": "#F4F4F4",
    "cached_free": "#C9C9C9",  # freed, still holding a hashed prefix
    "shared": BLACK,  # outline of a block with reference count > 1
    "hole": "#FFFFFF",  # an evicted slot inside a held block
    "block_outline": "#9A9A9A",  # outline of a free or cached-free block
    "contiguous": "#4D4D4D",  # memory reserved contiguously per request (before paging)
    "paged": BLUE,  # memory reserved in blocks
    # device capacity, limits
    "limit": VERMILLION,
}

STATE_FILL: dict[str, str] = {
    "sink": "#E9B8D5",
    "recent": "#BFE3F6",
    "high_score": "#F6D38C",
    "kept": "#B9D3EA",
    "partial": "#E2ECF6",
    "evicted_now": VERMILLION,
    "evicted": LIGHT_GREY,
    "next": "#FFFFFF",
    "pending": "#F7F7F7",
}
STATE_TEXT: dict[str, str] = {s: INK for s in STATE_FILL} | {"evicted_now": "#FFFFFF", "evicted": "#6B6B6B", "pending": "#9A9A9A"}

SERIES = [BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY, "#7F6A00", BLACK]  # policies, requests
# requests of a paged run (owners of blocks): the series without black, which outlines shared blocks
REQUEST_COLORS = SERIES[:7]

# evicted keys on an attention heatmap: weights in greys instead of colour
EVICTED_SCALE = [[0.0, "#F4F4F4"], [1.0, "#5F5F5F"]]
# light bands behind groups of rows (query heads sharing one KV head)
BANDS = ["#DCE8F5", "#FBEBCC", "#D6EFE6", "#F3E1EC"]
PANEL = "#FAFAFA"  # plot background of dense scatter plots

# kept share of a map cell: 0 = evicted everywhere (grey), 1 = kept everywhere (blue)
KEPT_SCALE = [[0.0, LIGHT_GREY], [0.5, "#7FA9D1"], [1.0, BLUE]]


def series_color(i: int) -> str:
    return SERIES[i % len(SERIES)]


def request_color(i: int) -> str:
    return REQUEST_COLORS[i % len(REQUEST_COLORS)]


def tint(color: str, alpha: float) -> str:
    """``#RRGGBB`` at opacity ``alpha`` as an rgba() string (fills under lines)."""
    c = color.lstrip("#")
    r, g, b = (int(c[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha:g})"


def style(fig: go.Figure, height: int = 340, title: str | None = None) -> go.Figure:
    """The common layout: compact margins, legend on top, transparent background."""
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=50 if title or fig.layout.title.text else 20, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
        plot_bgcolor="rgba(0,0,0,0)",
        font=dict(size=13),
    )
    if title is not None:
        fig.update_layout(title=title)
    return fig
