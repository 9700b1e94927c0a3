"""Settings that outlive a page switch, and that live in the URL so a copied link reopens the view.

Streamlit forgets a widget's value once a page without that widget has run. ``persisted`` keeps
each value under a permanent session_state key (the widget itself uses the same key with a
leading underscore) and re-seeds the widget from it on every run.

With ``url="name"`` the value is also a query parameter: when a session first meets the
parameter (a link was opened), the URL's value wins over the default; afterwards every run writes
the current value back (and drops it while it equals the default, so links stay short). A value
in the URL that cannot be used is ignored and named in a notice in the sidebar, with what the page
uses instead; the notice stays while the visitor is on that page (a run that reruns at once, as a
link to a result does, does not hide it): a link never breaks a page.

Usage::

    steps = persisted(st.slider, "live.max_new_tokens", 32, url="new", label="New tokens", min_value=1, max_value=256)
"""

from __future__ import annotations

import base64
import zlib
from typing import Any, Callable

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from kvviz.i18n import _
from kvviz.ui.token_html import md_escape  # a link's text is untrusted

_SEEN = "kvviz_url_seen"  # url names this session has already taken from the URL
_PROBLEMS = "kvviz_url_problems"  # url name -> (page, message), for values the URL gave that could not be used
_AREA = "kvviz_url_notice_area"  # this run's container for those messages, drawn by the sidebar


PLAIN_MAX = 300  # a text value longer than this travels compressed (zlib, base64url, "z:" in front)
PACKED = "z:"
UNPACKED_MAX = 200_000  # characters a compressed value may unpack to (the longest prompt kvviz takes)


def pack(text: str) -> str:
    return PACKED + base64.urlsafe_b64encode(zlib.compress(text.encode("utf-8"), 9)).decode("ascii").rstrip("=")


def unpack(text: str) -> str:
    """The text ``pack`` made; ValueError for anything else, or when it would unpack past
    ``UNPACKED_MAX`` characters (checked while decompressing: a link cannot ask for gigabytes)."""
    body = text[len(PACKED):]
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        inflate = zlib.decompressobj()
        raw = inflate.decompress(data, 4 * UNPACKED_MAX + 1)
        if inflate.unconsumed_tail or len(raw) > 4 * UNPACKED_MAX or not inflate.eof:
            raise ValueError("too long or cut")
        out = raw.decode("utf-8")
    except (ValueError, zlib.error, UnicodeDecodeError) as exc:
        raise ValueError(f"a compressed value that does not unpack ({exc})") from None
    if len(out) > UNPACKED_MAX:
        raise ValueError(f"unpacks to more than {UNPACKED_MAX:,} characters")
    return out


def decode(text: str, default: Any, options=None) -> Any:
    """A query-parameter string as the type of ``default``; ValueError when it cannot be."""
    if isinstance(default, str) and options is None and text.startswith(PACKED):
        return unpack(text)
    if options is not None:
        for option in options:
            if str(option) == text:
                return option
        raise ValueError(f"'{text}' is not one of the choices")
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"'{text}' is not true or false")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        value = float(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"'{text}' is not a finite number")
        return value
    if isinstance(default, (tuple, list)):
        parts = [p for p in text.split(",") if p != ""]
        if default and len(parts) != len(default):
            raise ValueError(f"'{text}' needs {len(default)} values")
        items = [decode(p, default[0]) if default else p for p in parts]
        return type(default)(items)
    return text


def encode(value: Any) -> str:
    if isinstance(value, str) and (len(value) > PLAIN_MAX or value.startswith(PACKED)):
        return pack(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (tuple, list)):
        return ",".join(encode(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def from_url(
    url: str, default: Any, *, options=None, check: Callable[[Any], None] | None = None, instead: Callable[[], Any] | None = None,
) -> tuple[bool, Any]:
    """(found, value) of query parameter ``url`` the first time this session meets it.

    ``check`` may raise ValueError for a value of the right type that cannot be used (out of range).
    ``instead`` gives the value the page uses when the link's cannot be (``default`` when not given):
    the notice names it."""
    state = st.session_state
    seen = state.setdefault(_SEEN, set())
    if url in seen:
        return False, None
    seen.add(url)
    if url not in st.query_params:
        return False, None
    text = st.query_params[url]
    try:
        value = decode(text, default, options)
        if check is not None:
            check(value)
    except (ValueError, TypeError) as exc:
        used = instead() if instead is not None else default
        report_problem(url, _("link setting '{url}' ignored: {reason}; the page uses {used} instead.").format(
            url=url, reason=str(exc).rstrip("."), used=encode(used) or _("nothing")))
        return False, None
    return True, value


def report_problem(url: str, message: str) -> None:
    """A link setting that could not be used: shown in the sidebar's notice area when this run
    has drawn it (a setting read further down the page), and kept to be shown again on this page's
    next runs."""
    st.session_state.setdefault(_PROBLEMS, {})[url] = (_page(), message)
    area = st.session_state.get(_AREA)
    if area is not None:
        _show(area, message)


def _page() -> str:
    ctx = get_script_run_ctx()
    return ctx.page_script_hash if ctx is not None else ""


def notice_area() -> None:
    """Draw the place for link notices (the sidebar calls this once per run) and show those found
    so far on this page; settings read later in the run report there at once, not one run late."""
    st.session_state[_AREA] = area = st.container()
    for message in url_problems():
        _show(area, message)


def _show(area, message: str) -> None:
    area.warning(md_escape(message), icon=":material/link_off:")


def within(lo: float, hi: float) -> Callable[[Any], None]:
    """A ``check`` for ``from_url``: ValueError for a value outside [lo, hi]."""
    def check(value) -> None:
        if not lo <= value <= hi:
            raise ValueError(f"{value} is outside [{lo}, {hi}]")
    return check


def to_url(url: str, value: Any, default: Any) -> None:
    """Write the current value into the address bar (dropped while it equals the default)."""
    text = encode(value)
    if value == default or text == encode(default):
        if url in st.query_params:
            del st.query_params[url]
    elif st.query_params.get(url) != text:
        st.query_params[url] = text


def url_problems() -> list[str]:
    """Messages for link settings of this page that could not be used; those of another page
    are dropped (they were shown while the visitor was there)."""
    here = _page()
    kept = {url: (page, message) for url, (page, message) in st.session_state.get(_PROBLEMS, {}).items() if page == here}
    st.session_state[_PROBLEMS] = kept
    return [message for _, message in kept.values()]


def _among(value: Any, options) -> bool:
    """A widget value is one of ``options`` (a multiselect's value: each of its items is)."""
    options = list(options)
    if isinstance(value, (list, tuple)) and value not in options:
        return all(v in options for v in value)
    return value in options


def persisted(
    widget: Callable[..., Any], key: str, default: Any, *, url: str | None = None, url_max: int = 6000,
    widget_key: str | None = None, **kwargs: Any,
) -> Any:
    """``widget(key=widget_key or "_" + key, ...)`` whose value survives page switches (and lives
    in the URL as ``url`` when given; a long text compressed, and left out with a caption when even
that is longer than ``url_max``). Returns the
    widget's value."""
    state = st.session_state
    options = kwargs.get("options")
    if url is not None:
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")

        def check(value):
            if lo is not None and value < lo or hi is not None and value > hi:
                raise ValueError(f"{value} is outside [{lo}, {hi}]")

        found, value = from_url(url, default, options=options, check=check if lo is not None or hi is not None else None,
                                instead=lambda: state.get(key, default))
        if found:
            state[key] = value
    if key not in state or (options is not None and not _among(state[key], options)):
        state[key] = default
    widget_key = widget_key or "_" + key
    state[widget_key] = state[key]

    def store() -> None:
        state[key] = state[widget_key]

    value = widget(key=widget_key, on_change=store, **kwargs)
    state[key] = value
    if url is not None:
        fits = len(encode(value)) <= url_max
        to_url(url, value if fits else default, default)
        if not fits:  # never dropped without a word
            st.caption(_("Too long to travel in this page's link (over {n} characters even compressed): "
                         "a copied link opens without it; share a run bundle instead.").format(n=f"{url_max:,}"))
    return value
