"""A bounded window of a long sequence for the token views: at most ``WINDOW`` chips at a time
(a 32k-token trace would be 32k spans), a slider over pages counted back from the newest token
(the default, so a run shows its output and the tokens just before it) and a caption saying
which tokens are shown of how many. Short sequences pass through unchanged, with no control."""

from __future__ import annotations

import streamlit as st

from kvviz.i18n import _
from kvviz.record.token_states import TokenRecord

WINDOW = 2048  # tokens drawn at once


def _bounds(n: int, page: int, size: int) -> tuple[int, int]:
    """Page ``page`` (0 = the newest tokens) of ``n`` tokens: [start, end)."""
    end = n - page * size
    return max(0, end - size), end


def entered(records: list[TokenRecord]) -> int:
    """Tokens entered so far (pending ones, of later steps, are a suffix and never drawn)."""
    return sum(r.state != "pending" for r in records)


def page_control(n: int, key: str, size: int = WINDOW, where=None) -> int:
    """The page of ``n`` tokens to show (0 = the newest ``size``): a slider when they do not fit."""
    if n <= size:
        return 0
    pages = -(-n // size)
    return (where or st).select_slider(
        _("Tokens shown"), options=list(range(pages - 1, -1, -1)), value=0, key=f"{key}.{pages}",
        format_func=lambda k: "{:,}–{:,}".format(_bounds(n, k, size)[0] + 1, _bounds(n, k, size)[1]),
        help=_("A long sequence is drawn {size} tokens at a time; the rightmost page holds the newest tokens.").format(size=f"{size:,}"),
    )


def window(records: list[TokenRecord], page: int, size: int = WINDOW) -> tuple[list[TokenRecord], str]:
    """(the records of ``page``, a caption); the records whole and no caption when they fit."""
    n = entered(records)
    if n <= size:
        return records, ""
    start, end = _bounds(n, min(page, -(-n // size) - 1), size)
    return records[start:end], _("Showing tokens {first}–{last} of {n} (at most {size} at a time; move the slider for the others).").format(
        first=f"{start + 1:,}", last=f"{end:,}", n=f"{n:,}", size=f"{size:,}")


def windowed(records: list[TokenRecord], key: str, size: int = WINDOW) -> list[TokenRecord]:
    """``window`` at the page its own slider picks, with the caption (one call per view)."""
    shown, caption = window(records, page_control(entered(records), key, size), size)
    if caption:
        st.caption(caption)
    return shown
