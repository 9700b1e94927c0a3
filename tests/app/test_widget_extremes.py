"""Every number input and slider of a page at its largest, then at its smallest value (issue 24):
the page draws without an exception and no red box names Python (a traceback or an exception
class); a refusal is the page's own sentence. An input without a top gets 10**9, what a visitor
can type. Runs are not started (their bounds are the job caps' and the benchmarks')."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

PAGES = Path(__file__).resolve().parents[2] / "pages"
PYTHON = re.compile(r"Traceback|File \"|\b[A-Z][A-Za-z]*(Error|Exception)\b|object has no attribute|NoneType")
UNBOUNDED = 10**9
SKIP = ("attn.new_tokens",)  # the Attention explorer generates these on the spot: a run, not a widget's draw


def extremes(widget, top: bool):
    if widget.type == "select_slider":
        options = list(widget.options)
        return options[-1] if top else options[0]
    lo, hi = widget.min, widget.max
    if hi is None or hi == "":
        hi = UNBOUNDED
    value = hi if top else lo
    return (value, value) if isinstance(widget.value, tuple) else value


def python_in_red(at: AppTest) -> list[str]:
    return [e.value for e in at.error if PYTHON.search(e.value)] + [e.message for e in at.exception]


@pytest.mark.parametrize("page", ["2_Live_Policy.py", "3_Compare.py", "4_Tradeoffs.py", "5_Paged_Cache.py",
                                  "6_Memory_Calculator.py", "7_Quantization_Lab.py"])
def test_every_widget_at_its_ends(page, smollm):
    at = AppTest.from_file(str(PAGES / page), default_timeout=600).run()
    assert not python_in_red(at)
    for top in (True, False):
        widgets = [w for w in (*at.main.number_input, *at.main.slider, *at.main.select_slider)
                   if w.key and not w.key.endswith(SKIP) and not w.disabled]
        # a select slider that shows its options through a format function is left at its value (the
        # test cannot hand the raw option back through its label)
        widgets = [w for w in widgets if w.type != "select_slider" or w.format_func(w.value) == str(w.value)]
        assert widgets, page
        for widget in widgets:
            widget.set_value(extremes(widget, top))
        at.run()
        assert not python_in_red(at), (page, "top" if top else "bottom", python_in_red(at))
