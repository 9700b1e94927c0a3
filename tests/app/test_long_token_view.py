"""AppTest: a long trace on the Live page draws a bounded window of token chips, the newest
tokens first, and the slider moves the window; the caption says which tokens of how many."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from kvviz.live import run as live_run
from kvviz.policies.spec import PolicySpec
from kvviz.ui.token_window import WINDOW
from tests.unit.live_synthetic import make_trace

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "2_Live_Policy.py")
PROMPT = 5000  # 5,000 prompt tokens + 4 generated: three windows of 2,048


def long_trace():
    n = PROMPT + 4
    ev = np.full((2, 2, n), -1, dtype=np.int32)
    ev[:, :, 100] = 0  # one evicted token, far from the newest
    return make_trace(
        prompt_ids=list(range(PROMPT)), generated_ids=[10, 11, 12, 13], tokens=[f"t{i} " for i in range(n)],
        evicted_at_step=ev, scores=np.full((2, 2, n), np.nan, dtype=np.float32),
    )


def positions(at: AppTest) -> list[int]:
    """data-pos of every token chip the Tokens tab drew."""
    html = "".join(h.proto.body for h in at.get("html"))
    return [int(p) for p in re.findall(r'<span class="tok st-[^"]*" data-pos="(\d+)"', html)]


@pytest.fixture()
def page(smollm):
    at = AppTest.from_file(PAGE, default_timeout=600)
    trace = long_trace()
    request = live_run.LiveRequest(PolicySpec.create("full"), trace.n_steps, list(trace.prompt_ids), compare=False, prompt_name="long", model_name="synthetic")
    at.session_state["live.result"] = live_run.LiveResult(request, trace, generated_text=trace.generated_text)
    return at.run()


def test_a_long_trace_draws_one_window_and_the_slider_moves_it(page):
    at = page
    assert not at.exception, at.exception
    step = at.session_state["live.result"].trace.n_steps - 1  # the page opens at the last step
    entered = PROMPT + step + 1  # tokens drawn at that step: the prompt, the output so far and the next token
    shown = positions(at)
    assert len(shown) == WINDOW and shown == list(range(entered - WINDOW, entered))  # the newest tokens, the output among them
    assert any(f"Showing tokens {entered - WINDOW + 1:,}–{entered:,} of {entered:,}" in c.value for c in at.caption)
    slider = at.select_slider(key=f"live.tokens.page.{-(-entered // WINDOW)}")
    slider.set_value(2).run()  # the oldest page: the first tokens
    shown = positions(at)
    assert shown == list(range(0, entered - 2 * WINDOW))
    assert any(f"Showing tokens 1–{entered - 2 * WINDOW:,} of {entered:,}" in c.value for c in at.caption)
    assert 'data-pos="100"' in "".join(h.proto.body for h in at.get("html"))
