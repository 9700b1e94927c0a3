"""The app in other languages: standard gettext catalogs, kept as Babel ``.po`` files.

Mark a user-facing string with ``_()`` (``ngettext`` for a count, ``N_`` where a string is defined
for later display); a value goes in as a named placeholder, never an f-string (``pybabel extract``
cannot read those)::

    from kvviz.i18n import _
    st.caption(_("{n} tokens").format(n=f"{n:,}"))

The language is the current Streamlit session's (``LANG`` in session_state, set by the sidebar's
switch; a link's ``lang=`` until the switch has read it), read by ``kvviz.ui.session_language``.
Outside a Streamlit run (the CLI, the chart builders in a test) it is always English, and English
is the msgid itself, unchanged.

Catalogs: ``kvviz/locale/<locale>/LC_MESSAGES/kvviz.po``; ``make messages`` extracts the marked
strings (babel.cfg) into ``kvviz/locale/kvviz.pot`` and merges them into each ``.po``. No compiled
``.mo`` is kept: a ``.po`` is read with Babel and compiled in memory, once per process.
"""

from __future__ import annotations

import gettext
import io
import threading
from functools import lru_cache
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator

LANG = "kvviz_lang"  # session_state key of the sidebar's language switch (URL: lang=)
ENGLISH = "en"
LANGUAGES = {ENGLISH: "English", "zh": "中文"}  # URL value -> the name the switch shows
LOCALES = {"zh": "zh_CN"}  # URL value -> catalog directory under kvviz/locale
DOMAIN = "kvviz"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"


def catalog_path(lang: str) -> Path:
    return LOCALE_DIR / LOCALES[lang] / "LC_MESSAGES" / f"{DOMAIN}.po"


@lru_cache(maxsize=None)
def translations(lang: str) -> gettext.NullTranslations:
    """The catalog of ``lang`` as a gettext translations object (English: none, msgids pass through).
    Fuzzy and empty entries are left out, so they show in English."""
    if lang not in LOCALES:
        return gettext.NullTranslations()
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with catalog_path(lang).open("rb") as f:
        catalog = read_po(f, locale=LOCALES[lang], domain=DOMAIN)
    mo = io.BytesIO()
    write_mo(mo, catalog)
    mo.seek(0)
    return gettext.GNUTranslations(mo)


_language_source: Callable[[], str | None] | None = None  # set by the app's ui (kvviz.ui)


def set_language_source(source: Callable[[], str | None]) -> None:
    """Where ``current_language`` reads the visitor's choice: the Streamlit session, registered by
    ``kvviz.ui`` (the core imports no Streamlit). ``source`` returns None outside a session."""
    global _language_source
    _language_source = source


_pinned = threading.local()  # a language fixed for a call of ``bound``'s function


def current_language() -> str:
    """The language of this Streamlit session; English outside a Streamlit run."""
    lang = getattr(_pinned, "lang", None) or (_language_source() if _language_source is not None else None)
    return lang if lang in LANGUAGES else ENGLISH


@contextmanager
def speaking(lang: str) -> Iterator[None]:
    """Within the block ``_`` speaks ``lang``, whatever the session's (this thread only): English
    for what a run saves, the run's language for a function called after it."""
    before = getattr(_pinned, "lang", None)
    _pinned.lang = lang
    try:
        yield
    finally:
        _pinned.lang = before


def bound(fn: Callable[..., str]) -> Callable[..., str]:
    """``fn`` that always speaks the language current now: a widget's ``format_func``, which
    Streamlit's AppTest calls again after the script run, where the session is out of reach."""
    lang = current_language()

    def call(*args):
        with speaking(lang):
            return fn(*args)

    return call


def _(message: str) -> str:
    """``message`` in the session's language."""
    return translations(current_language()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(current_language()).ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Marks ``message`` for extraction without translating it (translate it with ``_`` where shown)."""
    return message
