"""The one HTML token renderer: tokens as chips, coloured by their state in the cache (the Live
page), tinted by attention (the Attention page), side by side (a comparison) or streaming.

Every chip has the classes ``tok`` and ``st-<state>``; the rules come from ``token_css`` and
every colour from ``kvviz.charts.style``. Byte pieces of one character (see ``kvviz.record.text``) are
drawn as one chip whose hover says which tokens it joins.

Prompt and model text is untrusted: every piece of it goes through ``esc`` (control characters
made visible, then ``html.escape`` with quotes), in the text and in the ``title`` attributes, and
the HTML is shown with ``st.html`` (no markdown processing, scripts never run).
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import streamlit as st

from kvviz.charts.style import COLORS, STATE_CUE, STATE_FILL, STATE_TEXT, TEXT, tint
from kvviz.charts.token_map import describe_record, state_label
from kvviz.i18n import _
from kvviz.record.text import char_groups
from kvviz.record.token_states import STATES, TokenRecord, state_counts, visible_text

BOX = (
    "font-family: ui-sans-serif, system-ui, sans-serif; font-size: 15px; line-height: 2.0;"
    " white-space: pre-wrap; word-break: break-word;"
)
# every chip has a 2px border (transparent unless its state draws one), so no state changes its size
TOKEN = "padding: 0 1px; margin: 0 1px 0 0; border-radius: 4px; border: 2px solid transparent;"
DIVERGENCE = COLORS["differ"]


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


def token_css() -> str:
    """One rule per state (the palette of kvviz.charts.style), scoped to the token views."""
    rules = [
        f".kvviz-tokens {{ {BOX} }}",
        f".kvviz-tokens .tok, .kvviz-legend .tok {{ {TOKEN} }}",
        f".kvviz-tokens .gen {{ border-bottom: 2px solid {COLORS['generated']}; }}",
        f".kvviz-tokens .out {{ color: {TEXT['generated']}; font-weight: 600; padding: 0 4px; }}",
        f".kvviz-tokens .muted {{ color: {TEXT['muted']}; }}",
        f".kvviz-tokens .mark {{ outline: 3px solid {COLORS['needle']}; outline-offset: 1px; font-weight: 700; }}",
        f".kvviz-tokens .sel {{ outline: 2px solid {COLORS['highlight']}; font-weight: 700; }}",
        f".kvviz-tokens .diverge {{ outline: 2px solid {DIVERGENCE}; background: {tint(DIVERGENCE, 0.25)}; font-weight: 600; }}",
        f".kvviz-tokens .after {{ background: {tint(DIVERGENCE, 0.08)}; }}",
        f".kvviz-box {{ flex: 1; min-width: 260px; border: 1px solid {COLORS['outline']}; border-radius: 8px; padding: 8px 12px; }}",
        f".kvviz-caret {{ color: {TEXT['generated']}; }}",
        f".kvviz-scroll:focus-visible {{ outline: 2px solid {COLORS['highlight']}; outline-offset: 2px; }}",
    ]
    for state in STATES:
        # three classes: outranks the two-class .tok rule above (its transparent border)
        rules.append(
            f".kvviz-tokens .tok.st-{state}, .kvviz-legend .tok.st-{state} "
            f"{{ background-color: {STATE_FILL[state]}; color: {STATE_TEXT[state]}; {STATE_CUE[state][1]} }}"
        )
    return "<style>" + "\n".join(rules) + "</style>"


def partial_fill(kept_share: float) -> str:
    """The inline style of a partly kept chip: the kept colour over ``kept_share`` of its width,
    then the partial state's light fill (its text stays on light fills: 4.5:1 on both)."""
    pct = round(100 * min(max(kept_share, 0.0), 1.0))
    kept, rest = STATE_FILL["kept"], STATE_FILL["partial"]
    return f"background-image: linear-gradient(to right, {kept} {pct}%, {rest} {pct}%);"


def _group_title(pieces: list[TokenRecord], step: int) -> str:
    """Hover of a chip: one record, or the byte-level tokens that make one character."""
    if len(pieces) == 1:
        return describe_record(pieces[0], step)
    first, last = pieces[0].position, pieces[-1].position
    lines = [_("one character from {n} byte-level tokens (#{first}–#{last}): the tokenizer split its UTF-8 bytes").format(
        n=len(pieces), first=first, last=last)]
    lines += [describe_record(r, step) for r in pieces]
    return "\n".join(lines)


def tokens_html(records: list[TokenRecord], step: int, show_pending: bool = False, marked: Sequence[int] = ()) -> str:
    """The tokens at ``step`` as chips coloured by state (classes ``st-<state>``, rules in
    ``token_css``); a partly kept token is as opaque as the share that keeps it; the prompt's end
    is marked; positions in ``marked`` (search matches, the pass key) are ringed."""
    marked = set(marked)
    parts = [token_css(), '<div class="kvviz-tokens">']
    for a, b in char_groups([r.text for r in records]):
        pieces = [r for r in records[a:b] if show_pending or r.state != "pending"]
        if not pieces:
            continue
        r = pieces[-1]
        text = records[b - 1].text if pieces[-1] is records[b - 1] else "…"  # a character not complete yet
        if r.generated and (pieces[0].position == 0 or (a > 0 and not records[a - 1].generated)):  # records may be a window
            starts, output = esc(_("the model's output starts here")), esc(_("output:"))
            parts.append(f'<span class="out" title="{starts}">▌{output}</span>')
        classes = f"tok st-{r.state}" + (" gen" if r.generated else "") + (" mark" if marked & {p.position for p in records[a:b]} else "")
        # a partly kept chip is filled from the left as far as the share of layers/heads keeping it
        share = f' style="{partial_fill(r.kept_share)}"' if r.state == "partial" else ""
        joined = f' data-pieces="{len(pieces)}"' if len(pieces) > 1 else ""
        parts.append(
            f'<span class="{classes}" data-pos="{r.position}"{joined}{share}'
            f' title="{title(_group_title(pieces, step))}">{esc(text)}</span>'
        )
    parts.append("</div>")
    return "".join(parts)


def attention_tokens_html(
    tokens: list[str],
    *,
    prompt_len: int,
    weights: np.ndarray | None = None,
    selected: int | None = None,
    evicted: np.ndarray | None = None,
    start: int = 0,
    stop: int | None = None,
    marked: Sequence[int] = (),
) -> str:
    """Tokens start..stop as chips tinted by ``weights`` (e.g. the selected query's attention,
    scaled to its maximum), the selected token outlined, evicted ones in the evicted state,
    generated ones underlined. Each chip's title gives position and weight."""
    stop = len(tokens) if stop is None else min(stop, len(tokens))
    marked = set(marked)
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        top = float(np.nanmax(w[start:stop])) if stop > start else 0.0
        w = w / top if top > 0 else np.zeros_like(w)
    parts = [token_css(), '<div class="kvviz-tokens">']
    if start > 0:
        parts.append('<span class="muted">' + esc(_("… {n} tokens before …").format(n=start)) + "</span> ")
    for a, b in char_groups(list(tokens)):
        if b <= start or a >= stop:
            continue
        positions = range(max(a, start), min(b, stop))
        pos = positions[-1]
        text = tokens[b - 1] if b - 1 < stop else "…"
        is_evicted = evicted is not None and any(p < len(evicted) and evicted[p] for p in positions)
        classes = "tok" + (" st-evicted" if is_evicted else "") + (" gen" if pos >= prompt_len else "")
        classes += (" sel" if selected is not None and selected in positions else "") + (" mark" if marked & set(positions) else "")
        style = ""
        label = f"#{positions[0]}" + (_("–#{last} (one character from {n} byte-level tokens)").format(last=pos, n=len(positions))
                                      if len(positions) > 1 else "")
        if w is not None:
            share = float(np.clip(max(w[p] for p in positions), 0, 1))
            if share > 0.005 and not is_evicted:
                style = f' style="background: {tint(COLORS["attention"], 0.08 + 0.85 * share)};"'
            label += _(" · attention {weight}").format(weight=f"{max(float(weights[p]) for p in positions):.3g}")
        label += (_(" · evicted") if is_evicted else "") + (_(" · generated") if pos >= prompt_len else "")
        label += _(" · selected") if selected is not None and selected in positions else ""
        parts.append(f'<span class="{classes}" data-pos="{pos}"{style} title="{html.escape(label, quote=True)}">{esc(text)}</span>')
    if stop < len(tokens):
        parts.append(' <span class="muted">' + esc(_("… {n} tokens after …").format(n=len(tokens) - stop)) + "</span>")
    parts.append("</div>")
    return "".join(parts)


def legend_html(states: dict[str, int] | None = None) -> str:
    """A swatch per state (those in ``states`` with their counts, or all): a sample chip drawn as
    the tokens are, so its outline, bar or strike reads without colour too."""
    items = []
    for state, (_label, meaning) in STATES.items():
        if states is not None and state not in states:
            continue
        count = f" {states[state]}" if states is not None else ""
        fill = f' style="{partial_fill(0.5)}"' if state == "partial" else ""
        tip = _("{meaning} ({cue})").format(meaning=_(meaning), cue=_(STATE_CUE[state][0]))  # both N_-marked where defined
        items.append(
            f'<span title="{esc(tip)}" style="margin-right: 14px; white-space: nowrap;">'
            f'<span class="tok st-{state}" aria-hidden="true"{fill}>Ab</span>'
            f" {html.escape(state_label(state))}<b>{count}</b></span>"
        )
    return f'{token_css()}<div class="kvviz-legend" style="font-size: 13px; line-height: 1.9;">{"".join(items)}</div>'


def _chips(texts: list[str], classes_of) -> str:
    """Plain chips for a list of texts, byte pieces of one character joined."""
    spans = []
    for a, b in char_groups(list(texts)):
        extra, tip = classes_of(a, b)
        spans.append(f'<span class="tok{extra}"{tip}>{esc(texts[b - 1])}</span>')
    return "".join(spans)


def comparison_html(full_tokens: list[str], policy_tokens: list[str], divergence: int | None, policy_name: str) -> str:
    """The two outputs side by side; the first token that differs, and everything after, marked."""

    def classes_of(a: int, b: int) -> tuple[str, str]:
        if divergence is not None and a <= divergence < b:
            tip = _("first divergence: generated token {index} (counted from 0, the first generated token)").format(index=divergence)
            return " diverge", f' title="{esc(tip)}"'
        if divergence is not None and a > divergence:
            return " after", ""
        return "", ""

    def column(name: str, tokens: list[str]) -> str:
        body = _chips(tokens, classes_of) or "<i>" + esc(_("(nothing generated)")) + "</i>"
        return f'<div class="kvviz-box"><div style="font-weight: 600; margin-bottom: 4px;">{esc(name)}</div><div>{body}</div></div>'

    return (
        token_css()
        + '<div class="kvviz-tokens" style="display: flex; gap: 12px; flex-wrap: wrap;">'
        + column(_("full cache"), full_tokens)
        + column(policy_name, policy_tokens)
        + "</div>"
    )


def scroll_box(inner_html: str, label: str, height: int = 320) -> str:
    """``inner_html`` in a box at most ``height`` px tall that scrolls, reachable with the
    keyboard (a focusable region named ``label``: Tab to it, then the arrow keys scroll)."""
    return (
        f'<div class="kvviz-scroll" role="region" tabindex="0" aria-label="{esc(label)}"'
        f' style="max-height: {int(height)}px; overflow-y: auto; padding: 2px 6px 6px 2px;">{inner_html}</div>'
    )


def stream_html(text: str | list[str], cursor: bool = True) -> str:
    """The text generated so far (decoded from the whole id sequence), while a run goes on."""
    body = esc(text if isinstance(text, str) else "".join(text))
    caret = '<span class="kvviz-caret">▍</span>' if cursor else ""
    return f'{token_css()}<div class="kvviz-tokens kvviz-stream">{body}{caret}</div>'


def render(html_text: str) -> None:
    st.html(html_text)


def render_tokens(records: list[TokenRecord], step: int, show_pending: bool = False, marked: Sequence[int] = ()) -> None:
    shown = [r for r in records if r.state != "pending" or show_pending]
    render(legend_html(state_counts(shown)) + tokens_html(records, step, show_pending, marked))
