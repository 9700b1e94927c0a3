"""The Quantization lab in a real Chromium: the real cache's charts appear, the next-token runs
finish, nothing raises. With KVVIZ_SCREENSHOTS=1 the page after the runs is saved to
docs/screenshots/quantization_lab_runs.png."""

from __future__ import annotations

import re

from tests.e2e.test_browser import save_screenshot, wait_until_idle


def test_the_lab_reads_the_cache_and_runs_the_model(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    try:
        page.goto(app_url + "/Quantization_Lab", wait_until="domcontentloaded")
        wait_until_idle(page)
        main = page.locator('[data-testid="stMain"]')
        charts = main.locator('[data-testid="stPlotlyChart"]')
        charts.nth(3).wait_for(timeout=300_000)  # the first visit reads the cache and quantizes it
        assert page.locator('[data-testid="stException"]').count() == 0
        assert "A few key channels carry values far larger than the rest" in main.inner_text()
        assert charts.count() == 4
        assert re.search(r"key error per channel [\d.]+% vs per token [\d.]+%", main.inner_text())
        new_tokens = page.get_by_role("spinbutton", name="New tokens")
        new_tokens.fill("3")
        new_tokens.press("Enter")
        wait_until_idle(page)
        page.get_by_role("button", name="Run the model with quantized caches").click()
        charts.nth(4).wait_for(timeout=600_000)  # 9 runs of the model
        wait_until_idle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert charts.count() == 5
        save_screenshot(page, "quantization_lab_runs")
    finally:
        page.close()
