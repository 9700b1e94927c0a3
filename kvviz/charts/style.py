"""kvviz's one visual language: semantic colours used by every chart and token view.

The same state has the same colour on every page. The palette is Okabe & Ito's (2008),
distinguishable with the common forms of colour blindness; no meaning rests on red against green.

- ``COLORS``: strong colours for lines, markers and outlines, by meaning.
- ``STATE_FILL`` / ``STATE_TEXT``: backgrounds and text of token chips and map cells, per token
  state (see ``kvviz.record.token_states.STATES``). No state rests on hue alone: the fills step
  down in lightness (sink darkest, then kept, high score, recent window, evicted lightest;
  evicted-now dark with white text), and ``STATE_CUE`` adds an outline, a bar, a strike
  (chips) and ``STATE_SYMBOL`` a marker shape (the token map). Every chip's text reaches 4.5:1
  on its fill (WCAG AA; tests/unit/test_contrast.py computes it).
- ``TEXT``: the semantic colours darkened for text on white (4.5:1), where a colour is read as text.
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
    "read": GREEN,  # kept and read by the step's attention (retrieval)
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
    "sink": "#C98BB3",  # relative luminance 0.34
    "kept": "#8FB9E0",  # 0.46
    "high_score": "#F2C45A",  # 0.59
    "recent": "#CDE8F8",  # 0.78
    "read": "#7FD1B9",  # kept and read at this step (retrieval)
    "partial": "#F4F8FC",  # the part of the chip not kept; the kept share is drawn in STATE_FILL["kept"]
    "evicted_now": "#A84A00",  # dark: white text
    "evicted": "#F2F2F2",  # 0.89
    "next": "#FFFFFF",
    "pending": "#F7F7F7",
}
STATE_TEXT: dict[str, str] = {s: INK for s in STATE_FILL} | {"evicted_now": "#FFFFFF", "evicted": "#595959", "pending": "#666666"}
# what tells a state without colour, in words (the legend's hover) and as CSS (token chips)
STATE_CUE: dict[str, tuple[str, str]] = {
    "sink": ("solid outline", "border: 2px solid #6E2F5C;"),
    "recent": ("dotted outline", "border: 2px dotted #1F6FA3;"),
    "high_score": ("bold, a bar underneath", "font-weight: 700; box-shadow: inset 0 -3px 0 #8A5A00;"),
    "kept": ("plain fill", ""),
    "read": ("double underline, green", "border-bottom: 4px double #00573F;"),
    "partial": ("dashed outline, filled as far as it is kept", "border: 2px dashed #3F6F9F;"),
    "evicted_now": ("struck through, dark", "text-decoration: line-through; font-weight: 600;"),
    "evicted": ("struck through, light", "text-decoration: line-through;"),
    "next": ("black outline", f"border: 2px solid {BLACK}; font-weight: 600;"),
    "pending": ("italic", "font-style: italic;"),
}
# marker of each state on the token map: shape and outline tell states apart in greyscale too
STATE_SYMBOL: dict[str, dict] = {
    "sink": dict(symbol="square", line=dict(width=2.5, color="#6E2F5C")),
    "recent": dict(symbol="square-dot", line=dict(width=1.5, color="#1F6FA3")),
    "high_score": dict(symbol="square-cross", line=dict(width=1.5, color="#8A5A00")),
    "kept": dict(symbol="square", line=dict(width=1, color="#9C9C9C")),
    "read": dict(symbol="circle", line=dict(width=2, color="#00573F")),
    "partial": dict(symbol="diamond", line=dict(width=1.5, color="#3F6F9F")),
    "evicted_now": dict(symbol="square-x", line=dict(width=1.5, color=WHITE)),
    "evicted": dict(symbol="square", line=dict(width=1, color="#8C8C8C")),
    "next": dict(symbol="square", line=dict(width=2.5, color=BLACK)),
    "pending": dict(symbol="square-open", line=dict(width=1, color="#BDBDBD")),
}
# semantic colours as text on white or the page's light greys (at least 4.5:1)
TEXT: dict[str, str] = {
    "generated": "#007A5A",  # COLORS["generated"], darker
    "muted": "#666666",  # COLORS["muted"], darker
    "differ": "#A84A00",  # COLORS["differ"], darker
    "keys": "#005A8C",  # COLORS["keys"], darker
    "values": "#8A5A00",  # COLORS["values"], darker
}

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


# a policy's line differs from the others' by its dash and marker too (not hue alone), and the
# earlier series are drawn wider, so a line that coincides with a later one shows around it
SERIES_DASH = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
SERIES_SYMBOL = ["circle", "square", "diamond", "triangle-up", "triangle-down", "cross", "star", "x"]


def series_color(i: int) -> str:
    return SERIES[i % len(SERIES)]


def series_line(i: int, n: int) -> dict:
    """Line and marker of the i-th of n series: colour, dash, width (wider for earlier ones), symbol."""
    width = 2 + 2.5 * (n - 1 - i) / max(n - 1, 1)
    return dict(
        line=dict(color=series_color(i), width=round(width, 2), dash=SERIES_DASH[i % len(SERIES_DASH)]),
        marker=dict(size=5 + 2.5 * (n - 1 - i) / max(n - 1, 1) * 2, symbol=SERIES_SYMBOL[i % len(SERIES_SYMBOL)], color=series_color(i)),
    )


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
