"""Tokens as coloured HTML spans, with a legend and hover titles.

Prompt and model text is untrusted: every piece of it goes through ``esc`` (control characters
made visible, then ``html.escape`` with quotes), in the text and in the ``title`` attributes, and
the HTML is shown with ``st.html`` (no markdown processing, scripts never run).
"""

from __future__ import annotations

import html

import streamlit as st

from kvviz.charts.token_map import STATE_COLORS, STATE_TEXT_COLORS, describe_record
from kvviz.token_view import STATES, TokenRecord, state_counts, visible_text

BOX = (
    "font-family: ui-sans-serif, system-ui, sans-serif; font-size: 15px; line-height: 2.0;"
    " white-space: pre-wrap; word-break: break-word;"
)
TOKEN = "padding: 2px 1px; margin: 0 1px 0 0; border-radius: 4px;"
DIVERGENCE = "#dc2626"


def esc(text: str) -> str:
    """Untrusted text -> safe HTML text (and safe inside a quoted attribute)."""
    return html.escape(visible_text(text), quote=True)


_MARKDOWN_SPECIAL = set("\\`*_{}[]()#+-.!|<>$~=:&")


def md_escape(text: str) -> str:
    """Untrusted text -> literal text inside a Streamlit markdown string (no formatting, no
    HTML, no LaTeX): every markdown punctuation character is backslash-escaped."""
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIAL else ch for ch in visible_text(text).replace("\n", " "))


def title(text: str) -> str:
    """Untrusted multi-line text -> a safe ``title`` attribute value, one tooltip line per line."""
    return "&#10;".join(esc(line) for line in text.split("\n"))


_STATE_EXTRA = {
    "evicted": "text-decoration: line-through;",
    "evicted_now": "text-decoration: line-through; font-weight: 600;",
    "next": "outline: 2px solid #111827; font-weight: 600;",
    "pending": "opacity: 0.6;",
}


def token_css() -> str:
    """One rule per state (the palette of kvviz.charts.tokens), scoped to the token view."""
    rules = [
        f".kvviz-tokens {{ {BOX} }}",
        f".kvviz-tokens .tok, .kvviz-legend .tok {{ {TOKEN} }}",
        ".kvviz-tokens .gen { border-bottom: 2px solid #2563eb; }",
        ".kvviz-tokens .out { color: #2563eb; font-weight: 600; padding: 0 4px; }",
    ]
    for state in STATES:
        extra = _STATE_EXTRA.get(state, "")
        rules.append(f".st-{state} {{ background: {STATE_COLORS[state]}; color: {STATE_TEXT_COLORS[state]}; {extra} }}")
    return "<style>" + "\n".join(rules) + "</style>"


def tokens_html(records: list[TokenRecord], step: int, show_pending: bool = False) -> str:
    """The tokens at ``step`` as spans coloured by state (classes ``st-<state>``, rules in
    ``token_css``); a partly kept token is as opaque as the share that keeps it; the prompt's
    end is marked."""
    parts = [token_css(), '<div class="kvviz-tokens">']
    for r in records:
        if r.state == "pending" and not show_pending:
            continue
        if r.generated and (r.position == 0 or not records[r.position - 1].generated):
            parts.append('<span class="out" title="the model&#x27;s output starts here">▌output:</span>')
        classes = f"tok st-{r.state}" + (" gen" if r.generated else "")
        opacity = f' style="opacity: {0.45 + 0.55 * r.kept_share:.2f};"' if r.state == "partial" else ""
        parts.append(
            f'<span class="{classes}" data-pos="{r.position}"{opacity}'
            f' title="{title(describe_record(r, step))}">{esc(r.text)}</span>'
        )
    parts.append("</div>")
    return "".join(parts)


def legend_html(states: dict[str, int] | None = None) -> str:
    """A swatch per state (those in ``states`` with their counts, or all)."""
    items = []
    for state, (label, meaning) in STATES.items():
        if states is not None and state not in states:
            continue
        count = f" {states[state]}" if states is not None else ""
        items.append(
            f'<span title="{esc(meaning)}" style="margin-right: 14px; white-space: nowrap;">'
            f'<span class="tok st-{state}" style="display: inline-block; min-width: 14px; text-decoration: none;">&nbsp;</span>'
            f" {html.escape(label)}<b>{count}</b></span>"
        )
    return f'{token_css()}<div class="kvviz-legend" style="font-size: 13px; line-height: 1.9;">{"".join(items)}</div>'


def comparison_html(full_tokens: list[str], policy_tokens: list[str], divergence: int | None, policy_name: str) -> str:
    """The two outputs side by side; the first token that differs, and everything after, marked."""

    def column(title: str, tokens: list[str]) -> str:
        spans = []
        for i, t in enumerate(tokens):
            if divergence is not None and i == divergence:
                spans.append(
                    f'<span class="diverge" title="first divergence: generated token {i}" style="{TOKEN}'
                    f' outline: 2px solid {DIVERGENCE}; background: #fee2e2; font-weight: 600;">{esc(t)}</span>'
                )
            elif divergence is not None and i > divergence:
                spans.append(f'<span style="{TOKEN} background: #fef2f2;">{esc(t)}</span>')
            else:
                spans.append(f'<span style="{TOKEN}">{esc(t)}</span>')
        return (
            f'<div style="flex: 1; min-width: 260px; border: 1px solid #d1d5db; border-radius: 8px; padding: 8px 12px;">'
            f'<div style="font-weight: 600; margin-bottom: 4px;">{esc(title)}</div>'
            f'<div style="{BOX}">{"".join(spans) or "<i>(nothing generated)</i>"}</div></div>'
        )

    return (
        '<div style="display: flex; gap: 12px; flex-wrap: wrap;">'
        + column("full cache", full_tokens)
        + column(policy_name, policy_tokens)
        + "</div>"
    )


def stream_html(tokens: list[str], cursor: bool = True) -> str:
    """Tokens generated so far, for the live view while a run goes on."""
    body = "".join(esc(t) for t in tokens)
    caret = '<span style="color: #2563eb;">▍</span>' if cursor else ""
    return f'<div style="{BOX}">{body}{caret}</div>'


def render(html_text: str) -> None:
    st.html(html_text)


def render_tokens(records: list[TokenRecord], step: int, show_pending: bool = False) -> None:
    shown = [r for r in records if r.state != "pending" or show_pending]
    render(legend_html(state_counts(shown)) + tokens_html(records, step, show_pending))

