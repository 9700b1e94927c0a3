"""The Memory calculator in a real Chromium: the 70B/H100/KIVI-2 question answered in one click,
and the calculator checked against a real run of the embedded model. With KVVIZ_SCREENSHOTS=1 the
answered page is saved to docs/screenshots/memory_calculator_question.png."""

from __future__ import annotations

import re

from tests.e2e.test_browser import save_screenshot, wait_until_idle


def test_the_70b_question_and_the_real_cache_check(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    try:
        page.goto(app_url + "/Memory_Calculator", wait_until="domcontentloaded")
        wait_until_idle(page)
        page.get_by_role("button", name=re.compile("How many 32k-token requests fit")).click()
        wait_until_idle(page)
        main = page.locator('[data-testid="stMain"]')
        answer = page.get_by_text(re.compile(r"Requests of 32,768 tokens that fit at once on one H100 80GB")).first
        text = answer.locator("xpath=ancestor::*[@data-testid='stAlert'][1]").inner_text()
        assert "Llama-3.1-70B (int4 weights" in text and "3 with bf16" in text, text
        assert re.search(r"\d+ with kivi-2 \([\d.]+× as many\)", text), text
        assert answer.is_visible()
        assert main.locator('[data-testid="stPlotlyChart"]').count() == 2  # the memory chart and the attention kinds
        page.get_by_role("button", name="Run the model and compare").click()
        page.get_by_text(re.compile("agree to the byte")).wait_for(timeout=300_000)
        assert page.locator('[data-testid="stException"]').count() == 0
        save_screenshot(page, "memory_calculator_question")
    finally:
        page.close()
