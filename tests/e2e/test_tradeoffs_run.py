"""The Tradeoffs page in a real Chromium: a link carries a small sweep, Run shows progress, then
the Pareto chart, the answer within the memory limit and the table, with no exception. With
KVVIZ_SCREENSHOTS=1 the result is saved as docs/screenshots/tradeoffs_result.png."""

from __future__ import annotations

import urllib.parse

from tests.e2e.test_browser import save_screenshot, wait_until_idle

RUN_TIMEOUT_S = 900
SWEEP = {"policies": "window\nstreaming_llm:n_sink=4", "ratios": "0.25,0.5", "context": "64", "continuation": "16", "limit": "30"}


def test_a_small_sweep_from_a_link(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    try:
        page.goto(app_url + "/Tradeoffs?" + urllib.parse.urlencode(SWEEP), wait_until="domcontentloaded")
        wait_until_idle(page)
        assert page.get_by_role("textbox", name="Policies, one per line").input_value() == SWEEP["policies"]
        assert page.get_by_text("for 5 runs on cpu").count() == 1  # the estimate: reference + 2 x 2
        page.get_by_role("button", name="▶ Run").click()
        page.get_by_text("Run 1 of 5").or_(page.get_by_text("Run 2 of 5")).first.wait_for(timeout=RUN_TIMEOUT_S * 1000)
        page.get_by_text("the lowest perplexity is").wait_for(timeout=RUN_TIMEOUT_S * 1000)
        wait_until_idle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.get_by_text("Page not found").count() == 0
        chart = page.locator('[data-testid="stPlotlyChart"]')
        chart.locator(".legend").first.wait_for(timeout=30_000)
        assert chart.count() == 1
        legend = chart.first.locator(".legend").text_content()
        assert "window" in legend and "streaming_llm" in legend and "full cache" in legend
        # the two downloads pressed one right after the other both arrive, whole (no rerun between them)
        downloads = []
        page.on("download", lambda d: downloads.append(d))
        page.get_by_role("button", name="Download the table (CSV)").click()
        page.get_by_role("button", name="Download the report (HTML)").click()
        page.wait_for_timeout(100)
        for _ in range(300):
            if len(downloads) >= 2:
                break
            page.wait_for_timeout(100)
        got = {d.suggested_filename.rsplit(".", 1)[-1]: d for d in downloads}
        assert sorted(got) == ["csv", "html"], [d.suggested_filename for d in downloads]
        csv_text = open(got["csv"].path(), encoding="utf-8").read()
        html_text = open(got["html"].path(), encoding="utf-8").read()
        assert csv_text.count("\n") >= 5 and "streaming_llm" in csv_text and "window" in csv_text  # header + 5 runs
        assert html_text.startswith("<!DOCTYPE html>") and html_text.rstrip().endswith("</html>") and "streaming_llm" in html_text
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.get_by_role("button", name="▶ Run").is_enabled()
        save_screenshot(page, "tradeoffs_result")
    finally:
        page.close()
