"""Readable by everyone (WCAG 2.1 AA): text contrast computed here from the WCAG formula, for
the theme in .streamlit/config.toml and every colour kvviz draws text in; and no token state told
by hue alone (lightness, an outline, a strike or a marker shape tell them apart too)."""

from __future__ import annotations

import itertools
import re
import tomllib
from pathlib import Path

import pytest

from kvviz.charts.style import COLORS, STATE_CUE, STATE_FILL, STATE_SYMBOL, STATE_TEXT, TEXT
from kvviz.record.token_states import STATES
from kvviz.ui.token_html import legend_html, partial_fill, token_css

REPO = Path(__file__).resolve().parents[2]
AA = 4.5


def rgb(color: str) -> tuple[float, float, float]:
    c = color.lstrip("#")
    return tuple(int(c[i : i + 2], 16) / 255 for i in (0, 2, 4))


def luminance(color: str) -> float:
    """WCAG 2.1 relative luminance."""
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb(color))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def over(color: str, alpha: float, background: str) -> str:
    """``color`` at opacity ``alpha`` over ``background``, as the browser composes it."""
    mixed = [alpha * f + (1 - alpha) * b for f, b in zip(rgb(color), rgb(background))]
    return "#" + "".join(f"{round(255 * c):02X}" for c in mixed)


def test_the_formula_on_known_pairs():
    assert contrast("#000000", "#FFFFFF") == pytest.approx(21.0)
    assert contrast("#777777", "#FFFFFF") == pytest.approx(4.48, abs=0.01)  # the classic just-fails grey
    # the measurements of the old colours, to show this formula is axe's
    assert contrast("#6B6B6B", "#E3E3E3") == pytest.approx(4.15, abs=0.01)  # evicted chips
    assert contrast("#009E73", "#FFFFFF") == pytest.approx(3.42, abs=0.01)  # the "output:" marker


@pytest.fixture(scope="module")
def theme() -> dict:
    return tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["theme"]


def test_the_theme_text_and_captions(theme):
    text, background, secondary = theme["textColor"], theme["backgroundColor"], theme["secondaryBackgroundColor"]
    assert contrast(text, background) >= 7
    assert contrast(text, secondary) >= 7
    # captions, help and placeholder text are the text colour at 60% (Streamlit's fadedText60)
    assert contrast(over(text, 0.6, background), background) >= AA
    assert contrast(over(text, 0.6, secondary), secondary) >= AA
    # slider values and links are drawn in the primary and link colours; primary buttons write white on primary
    for key in ("primaryColor", "linkColor"):
        assert contrast(theme[key], background) >= AA, key
    assert contrast("#FFFFFF", theme["primaryColor"]) >= AA
    # the palette's text colours (st.metric deltas, :green[...], alerts' text on their tinted backgrounds)
    for name in ("red", "green", "blue", "orange", "violet", "gray", "yellow"):
        assert contrast(theme[f"{name}TextColor"], background) >= AA, name


def test_every_token_chip_reaches_aa():
    for state in STATES:
        assert contrast(STATE_TEXT[state], STATE_FILL[state]) >= AA, state
    # a partly kept chip is drawn over both the kept fill and its own light fill
    assert contrast(STATE_TEXT["partial"], STATE_FILL["kept"]) >= AA
    assert "opacity" not in token_css() + legend_html()  # nothing fades text below its measured contrast


def test_text_colours_on_white_and_the_page_greys(theme):
    for name, color in TEXT.items():
        for background in ("#FFFFFF", theme["secondaryBackgroundColor"]):
            assert contrast(color, background) >= AA, (name, background)
    # the divergence tint behind a diverged token (25% of the "differ" colour) keeps dark text readable
    assert contrast(theme["textColor"], over(COLORS["differ"], 0.25, "#FFFFFF")) >= AA


KEPT_STATES = ["sink", "kept", "high_score", "recent", "evicted", "evicted_now"]


def test_states_differ_in_lightness_not_hue_alone():
    lights = sorted(luminance(STATE_FILL[s]) for s in KEPT_STATES)
    assert all(b - a >= 0.1 for a, b in zip(lights, lights[1:])), lights  # distinct in greyscale


def test_states_differ_by_a_cue_besides_colour():
    css = {s: STATE_CUE[s][1] for s in STATES}
    for a, b in itertools.combinations(STATES, 2):
        assert css[a] != css[b], (a, b)
    # the rules really are in the chips' stylesheet
    sheet = token_css()
    for state in STATES:
        rule = re.search(rf"\.st-{state} \{{([^}}]*)\}}", sheet).group(1)
        assert STATE_CUE[state][1] in rule
    # the legend draws each state as a chip, so its swatch shows the cue
    legend = legend_html()
    for state in STATES:
        assert f'class="tok st-{state}"' in legend


def test_token_map_markers_differ_in_shape_or_lightness():
    for a, b in itertools.combinations(STATES, 2):
        same_shape = STATE_SYMBOL[a]["symbol"] == STATE_SYMBOL[b]["symbol"] and STATE_SYMBOL[a]["line"]["width"] == STATE_SYMBOL[b]["line"]["width"]
        if same_shape:
            assert abs(luminance(STATE_FILL[a]) - luminance(STATE_FILL[b])) >= 0.1, (a, b)


def test_partial_fill_shows_the_share():
    assert f"{STATE_FILL['kept']} 25%" in partial_fill(0.25)
    assert "100%" in partial_fill(7.0) and " 0%" in partial_fill(-1.0)
