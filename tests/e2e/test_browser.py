"""Open the home page and every registered page in headless Chromium: each must finish running
without a Streamlit exception. With KVVIZ_SCREENSHOTS=1, save docs/screenshots/<page>.png."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from kvviz.ui import navigation

REPO = Path(__file__).resolve().parents[2]
PAGES = [("Home", "/")] + [(p.url_path, "/" + p.url_path) for p in navigation.PAGES]
RUN_TIMEOUT_S = 300  # generous: a page may load the model or run it on the first visit
QUIET_S = 2.0  # the script must stay finished this long


def wait_until_idle(page, timeout_s: float = RUN_TIMEOUT_S) -> None:
    """Wait for the script run to finish: stApp not running and no running status widget."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_s * 1000)
    app = page.locator('[data-testid="stApp"]')
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        state = app.get_attribute("data-test-script-state")
        busy = state in (None, "initial", "running", "rerunRequested") or (
            page.locator('[data-testid="stStatusWidget"]').count() > 0
        )
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= QUIET_S:
            return
        time.sleep(0.25)
    raise AssertionError(f"the page was still running after {timeout_s} s")


def save_screenshot(page, name: str, width: int = 1400, max_height: int = 6000) -> None:
    """With KVVIZ_SCREENSHOTS=1, the whole page as docs/screenshots/<name>.png."""
    if os.environ.get("KVVIZ_SCREENSHOTS") != "1":
        return
    out = REPO / "docs" / "screenshots" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    # the page scrolls inside stMain, not the window: grow the window to show it all
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": width, "height": min(max(int(height), 1000), max_height)})
    # charts draw once they are in view: wait until every Plotly chart has drawn
    charts = page.locator('[data-testid="stPlotlyChart"]')
    for _ in range(40):
        if page.locator('[data-testid="stPlotlyChart"] .main-svg').count() >= charts.count():
            break
        page.wait_for_timeout(250)
    page.wait_for_timeout(800)
    page.screenshot(path=str(out), full_page=True)


@pytest.mark.parametrize("name, path", PAGES, ids=[name for name, _ in PAGES])
def test_page_runs_without_exception(browser, app_url, name, path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(app_url + path, wait_until="domcontentloaded")
        wait_until_idle(page)
        page.wait_for_selector('[data-testid="stSidebarUserContent"]')
        exceptions = page.locator('[data-testid="stException"]')
        assert exceptions.count() == 0, exceptions.first.inner_text()
        assert "SmolLM2-135M-Instruct" in page.locator('[data-testid="stSidebarUserContent"]').inner_text()
        # a link opened first in a new session resolves (no "Page not found" dialog)
        assert page.get_by_text("Page not found").count() == 0
        save_screenshot(page, name.lower())
    finally:
        page.close()


def test_home_shows_the_model_summary(browser, app_url):
    page = browser.new_page()
    try:
        page.goto(app_url, wait_until="domcontentloaded")
        wait_until_idle(page)
        body = page.locator('[data-testid="stMain"]').inner_text()
        assert "kvviz: inside the KV cache" in body
        assert "GQA (9 query heads share 3 KV heads)" in body
        assert "Running on CPU" in body or "cuda" in body
    finally:
        page.close()


def test_sidebar_choices_follow_across_pages(browser, app_url):
    """Pick an example on the home page, follow the navigation to another page: still picked."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(app_url, wait_until="domcontentloaded")
        wait_until_idle(page)
        sidebar = page.locator('[data-testid="stSidebarUserContent"]')
        example = sidebar.get_by_role("combobox", name="Example")
        example.evaluate("e => e.scrollIntoView({block: 'center'})")  # at a sidebar's bottom edge its list does not open
        example.click()
        page.get_by_role("option", name="Code: moving average").click()
        wait_until_idle(page)
        assert "A small Python function with its tests." in sidebar.inner_text()

        name, path = PAGES[-1]
        page.locator(f'[data-testid="stSidebarNav"] a[href$="{path}"]').click()
        page.wait_for_url(re.compile(re.escape(path) + r"(\?.*)?$"), wait_until="commit")  # links carry settings
        wait_until_idle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        example = page.locator('[data-testid="stSidebarUserContent"]').get_by_role("combobox", name="Example")
        assert example.input_value() == "Code: moving average"
    finally:
        page.close()
