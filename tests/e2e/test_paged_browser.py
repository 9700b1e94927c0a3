"""The Paged cache page in a real Chromium: each built-in scenario runs in one click and draws the
pool, the block tables and the memory charts; the step slider and Play move through the events.
With KVVIZ_SCREENSHOTS=1, save docs/screenshots/paged_<scenario>.png at a telling step."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from test_browser import wait_until_idle

from kvviz.paged.scenarios import SCENARIOS

REPO = Path(__file__).resolve().parents[2]
SHOW_STEP = {"prefix": 1, "sampling": 2, "preemption": 5, "holes": 3, "blocks": 1, "mixed": 1}  # where each mechanism shows


def open_page(browser, app_url: str, height: int):
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.goto(app_url + "/Paged_Cache", wait_until="domcontentloaded")
    wait_until_idle(page)
    return page


def set_step(page, step: int) -> None:
    """Move the step slider by keyboard until the page has rerun at ``step``: a key pressed while
    the rerun of the one before redraws the slider can be lost, so check and press again. While
    a rerun redraws it, the old slider and the new one can both be on the page for a moment."""
    for _ in range(4):
        slider = page.get_by_role("slider", name="Step").first
        slider.evaluate("e => e.scrollIntoView({block: 'center'})")
        slider.focus()
        now = int(slider.input_value() or 0)
        for _ in range(abs(step - now)):
            slider.press("ArrowRight" if step > now else "ArrowLeft")
            page.wait_for_timeout(150)
        wait_until_idle(page)
        if int(page.get_by_role("slider", name="Step").first.input_value() or -1) == step:
            return
    raise AssertionError(f"the step slider did not reach {step}")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.key for s in SCENARIOS])
def test_scenario_in_one_click(browser, app_url, scenario):
    page = open_page(browser, app_url, 2300)  # tall: the screenshot shows the whole page
    try:
        page.get_by_role("button", name=scenario.button, exact=True).click()
        wait_until_idle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0
        set_step(page, SHOW_STEP[scenario.key])
        body = page.locator('[data-testid="stMain"]').inner_text()
        assert re.search(rf"What happened in step {SHOW_STEP[scenario.key]}", body)
        titles = page.locator(".gtitle").evaluate_all("els => els.map(e => e.textContent)")
        assert any(t.startswith(f"Pool after step {SHOW_STEP[scenario.key]}:") for t in titles), titles
        assert any(t.startswith("KV memory reserved but holding no token") for t in titles)
        expected = {"prefix": "prefix hits", "sampling": "copy-on-write", "preemption": "preempted", "holes": "h2o evicted",
                    "blocks": "released", "mixed": "static batch"}[scenario.key]
        assert expected in body
        if os.environ.get("KVVIZ_SCREENSHOTS") == "1":
            out = REPO / "docs" / "screenshots" / f"paged_{scenario.key}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
    finally:
        page.close()


def test_play_walks_to_the_last_step(browser, app_url):
    page = open_page(browser, app_url, 1000)
    try:
        page.get_by_role("button", name="Parallel sampling", exact=True).click()
        wait_until_idle(page)
        slider = page.get_by_role("slider", name="Step").first
        last = int(slider.get_attribute("max"))
        page.get_by_role("button", name="▶ Play").click()
        page.get_by_role("button", name="▶ Play").wait_for(timeout=120_000)  # Pause turns back into Play at the end
        wait_until_idle(page)
        assert int(page.get_by_role("slider", name="Step").first.evaluate("e => e.value")) == last
        assert page.locator('[data-testid="stException"]').count() == 0
    finally:
        page.close()
