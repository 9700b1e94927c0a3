"""The one token renderer: byte pieces of one character become one chip that says so, search
matches are ringed, and untrusted text stays text."""

from __future__ import annotations

import dataclasses
import html
import re

from kvviz.record.text import match_positions
from kvviz.record.token_states import token_records
from kvviz.ui.token_html import attention_tokens_html, comparison_html, tokens_html
from tests.unit.live_synthetic import PROMPT_LEN, make_trace

# the prompt's last two tokens are the byte pieces of one emoji: "" then "🙂" (kvviz.record.text.token_texts)
TOKENS = ["<s>", " Hello", " <script>", " 缓", "", "🙂", " A", " B", " C", " D"]


def chips(out: str) -> list[tuple[str, str]]:
    """(attributes, shown text) of every chip."""
    return [(a, html.unescape(t)) for a, t in re.findall(r'<span class="tok([^>]*)>([^<]*)</span>', out)]


def test_byte_pieces_are_one_chip_whose_hover_says_so():
    trace = dataclasses.replace(make_trace(), tokens=list(TOKENS))
    out = tokens_html(token_records(trace, 3), 3)
    shown = chips(out)
    assert [t for _, t in shown] == ["<s>", " Hello", " <script>", " 缓", "🙂", " A", " B", " C", " D"]
    emoji = next(a for a, t in shown if t == "🙂")
    assert 'data-pieces="2"' in emoji and "one character from 2 byte-level tokens (#4–#5)" in emoji
    assert "<script>" not in out  # the hostile token is text


def test_search_rings_the_matching_chips():
    trace = dataclasses.replace(make_trace(), tokens=list(TOKENS))
    assert match_positions(trace.tokens, "LO <scr") == [1, 2]  # case-insensitive, across tokens
    assert match_positions(trace.tokens, "script> 缓") == [2, 3]
    assert match_positions(trace.tokens, "nowhere") == []
    out = tokens_html(token_records(trace, 3), 3, marked=match_positions(trace.tokens, "🙂"))
    ringed = [t for a, t in chips(out) if " mark" in a]
    assert ringed == ["🙂"]


def test_attention_tokens_and_comparison_join_pieces_too():
    out = attention_tokens_html(TOKENS, prompt_len=PROMPT_LEN, weights=[0.1] * len(TOKENS), selected=4)
    texts = [t for _, t in chips(out)]
    assert "🙂" in texts and "" not in texts
    sel = [t for a, t in chips(out) if " sel" in a]
    assert sel == ["🙂"]  # selecting a piece selects its character
    cmp = comparison_html(["", "🙂", " x"], ["", "🙂", " y"], 1, "p")
    assert [t for _, t in chips(cmp)] == ["🙂", " x", "🙂", " y"]
