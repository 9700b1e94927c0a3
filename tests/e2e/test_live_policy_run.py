"""The Live policy page in a real Chromium: tokens appear while the model generates, Stop ends
the run and keeps what was generated, and the step slider then moves without rerunning the model."""

from __future__ import annotations

import re
import urllib.parse

from playwright.sync_api import expect

from tests.e2e.conftest import COUNTING_PROMPT

RUN_TIMEOUT_S = 600


def test_stop_keeps_the_partial_run(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    try:
        page.goto(app_url + "/Live_Policy?" + urllib.parse.urlencode(COUNTING_PROMPT), wait_until="domcontentloaded")
        page.get_by_role("button", name="▶ Run").wait_for(timeout=RUN_TIMEOUT_S * 1000)
        thumb = page.get_by_role("slider", name="New tokens")
        thumb.focus()
        thumb.press("End")  # 256 new tokens: long enough to stop in the middle
        # the server has the new value once its rerun wrote it into the URL, and that rerun is over
        page.wait_for_url(re.compile(r"[?&]new=256(&|$)"), timeout=RUN_TIMEOUT_S * 1000)
        expect(page.locator('[data-testid="stApp"]')).to_have_attribute(
            "data-test-script-state", "notRunning", timeout=RUN_TIMEOUT_S * 1000
        )
        page.get_by_role("button", name="▶ Run").click()

        progress = page.get_by_text(re.compile(r"Generating with the policy: ([3-9]|\d\d+) / 256 tokens"))
        progress.wait_for(timeout=RUN_TIMEOUT_S * 1000)  # tokens stream in while the run goes on
        page.get_by_role("button", name="■ Stop").click()

        warning = page.get_by_text(re.compile(r"Stopped after \d+ generated tokens"))
        warning.wait_for(timeout=RUN_TIMEOUT_S * 1000)
        n = int(re.search(r"Stopped after (\d+) generated tokens", warning.inner_text()).group(1))
        assert "Stopped during the policy's own run" in warning.inner_text()
        assert 3 <= n < 256
        assert page.locator('[data-testid="stException"]').count() == 0
        tokens = page.locator(".kvviz-tokens").first
        assert "output:" in tokens.inner_text()
        assert tokens.locator(".tok").count() >= n  # the prompt and the generated tokens are shown
        assert page.get_by_role("button", name="▶ Run").is_enabled()  # ready for the next run
    finally:
        page.close()
