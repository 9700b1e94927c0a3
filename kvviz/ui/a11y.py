"""Accessibility helpers every page uses: charts with a text alternative, text for screen readers
only, the result brought into view after Run.

- ``chart`` shows a plotly figure with ``st.plotly_chart`` and, just before it, one line that
  says what it shows (``kvviz.charts.summary.describe``), visually hidden but read aloud.
- ``sr_only`` does the same for any text (what a metric's sparkline shows).
- ``bring_into_view`` scrolls a new result to the top of the view and gives it the focus.
- ``page_setup`` (called by ``start_page``): the sparklines of ``st.metric`` are Vega drawings
  with unnamed marks; they are hidden from screen readers (``aria-hidden``), which read the
  ``sr_only`` line beside each instead.

The two scripts here are our own text with no visitor text in them (``st.html`` with
``unsafe_allow_javascript``); token and prompt text never goes through them.
"""

from __future__ import annotations

import html
import json

import plotly.graph_objects as go
import streamlit as st

from kvviz.charts.summary import describe
from kvviz.i18n import _

# the usual "visually hidden" rule: out of sight, still in the accessibility tree; its element
# container taken out of the page's flow, so a hidden line adds no gap to the page
SR_CSS = (
    "<style>.kvviz-sr { position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; overflow: hidden;"
    " clip: rect(0 0 0 0); white-space: nowrap; border: 0; }"
    ' [data-testid="stElementContainer"]:has(> [data-testid="stHtml"] > .kvviz-sr) { position: absolute; width: 1px; height: 1px; overflow: hidden; }</style>'
)


def sr_only(text: str, where=None) -> None:
    """``text`` (plain, escaped here) for screen readers, not shown."""
    (where or st).html(f'{SR_CSS}<p class="kvviz-sr">{html.escape(text, quote=True)}</p>')


def chart(fig: go.Figure, key: str, where=None, what: str | None = None, **kwargs):
    """``st.plotly_chart(fig, key=key, width="stretch", **kwargs)`` in ``where`` (a column, a
    container; default the page), after a hidden line saying what it shows (``what``, or the
    figure's title). Returns what ``plotly_chart`` returns (a selection with ``on_select``)."""
    where = where or st
    sr_only(_("Chart. {description}").format(description=describe(fig, what)), where)
    kwargs.setdefault("width", "stretch")
    return where.plotly_chart(fig, key=key, **kwargs)


def _safe(text: object, extra: str = "-_") -> str:
    return "".join(c for c in str(text) if c.isascii() and (c.isalnum() or c in extra))


def bring_into_view(name: str, token: object) -> None:
    """Mark this place in the page, and scroll it to the top of the view (the keyboard focus moved
    there too) once per ``token`` (e.g. the id of a new result): after Run the result is in view,
    not the top of the page. Later reruns with the same token (a slider moved) leave the scroll
    alone."""
    name, stamp = _safe(name), _safe(token, "-_.")
    label = html.escape(_("The result"))
    st.html(
        f'{SR_CSS}<p class="kvviz-sr" tabindex="-1" id="kvviz-anchor-{name}">{label}</p>'
        "<script>(() => {"
        f" const key = 'kvviz-in-view-{name}';"
        f" if (sessionStorage.getItem(key) === '{stamp}') return;"
        " let tries = 0;"
        " const go = () => {"
        f"  const mark = document.getElementById('kvviz-anchor-{name}');"
        "  if (!mark) { if (++tries < 50) setTimeout(go, 100); return; }"
        # the mark is out of the flow (drawn at the top of its block): scroll to what follows it;
        # the page scrolls inside stMain: scroll that (vertically only), below Streamlit's header
        "  const box = mark.closest('[data-testid=\"stElementContainer\"]');"
        "  const target = (box && box.nextElementSibling) || box || mark;"
        "  const main = mark.closest('[data-testid=\"stMain\"]');"
        "  if (main) main.scrollTop += target.getBoundingClientRect().top - main.getBoundingClientRect().top - 64;"
        "  else target.scrollIntoView({block: 'start'});"
        "  mark.focus({preventScroll: true});"
        f"  sessionStorage.setItem(key, '{stamp}');"
        " };"
        " setTimeout(go, 100);"
        "})();</script>",
        unsafe_allow_javascript=True,
    )


# st.metric's sparkline: a Vega drawing whose marks have no names; screen readers read the
# sr_only line beside it instead (the marks are re-drawn on every rerun: watch for them)
_HIDE_SPARKLINES = """<script>(() => {
  if (window.kvvizSparklines) return;
  window.kvvizSparklines = true;
  const hide = () => document.querySelectorAll('[data-testid="stMetric"] svg:not([aria-hidden])')
    .forEach((svg) => svg.setAttribute('aria-hidden', 'true'));
  new MutationObserver(hide).observe(document.body, {childList: true, subtree: true});
  hide();
})();</script>"""


# A number typed outside its input's range stays in the browser, red: Streamlit keeps the previous
# value, so a Run pressed then would run that one without a word. A primary button (Run) pressed
# while a number input shows its range error is held back and the input takes the focus, its error
# read out (issue 24).
_HOLD_RUN_ON_RED = """<script>(() => {
  if (window.kvvizHoldRun) return;
  window.kvvizHoldRun = true;
  document.addEventListener('click', (event) => {
    const button = event.target.closest && event.target.closest('button[data-testid="stBaseButton-primary"]');
    if (!button) return;
    const red = document.querySelector('input[data-testid="stNumberInputField"][aria-describedby]');
    if (!red) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    red.focus();
    button.setAttribute('title', %s);
  }, true);
})();</script>"""


def page_setup() -> None:
    """What every page needs once (``start_page`` calls it)."""
    out_of_range = _("A number above is out of its range: fix it first (the run would use its previous value).")
    hold_run = _HOLD_RUN_ON_RED % json.dumps(out_of_range).replace("<", "\\u003c")
    st.html(f'{SR_CSS}<span class="kvviz-sr" aria-hidden="true"></span>{_HIDE_SPARKLINES}{hold_run}', unsafe_allow_javascript=True)
