"""The Compare page in a real Chromium: three policies run with no exception, and the address of
the view, opened in a fresh browser context (no shared session or cookies), restores the same
policies, the step and the same outputs. With KVVIZ_SCREENSHOTS=1, saves docs/screenshots/compare_run.png."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from test_browser import save_screenshot, wait_until_idle

RUN_TIMEOUT_S = 900
QUERY = "p1=h2o:recent=4,budget=12&p2=snapkv:window=4,budget=12&p3=streaming_llm:budget=12&same=0&new=4"


def outputs(page) -> list[str]:
    return [o.inner_text() for o in page.locator(".kvviz-output").all()]


def settings_shown(page) -> dict:
    main = page.locator('[data-testid="stMain"]')
    return {
        "policies": [s.inner_text() for s in main.locator('[data-testid="stSelectbox"]').filter(has_text="Policy").all()],
        "window": main.get_by_role("spinbutton", name="window").input_value(),
        "recent": main.get_by_role("spinbutton", name="recent").input_value(),
        "step": main.get_by_role("slider", name="Decode step, for every policy").input_value(),
    }


def test_three_policies_run_and_the_copied_address_restores_the_view(browser, app_url):
    first = browser.new_context(viewport={"width": 1500, "height": 1200})
    page = first.new_page()
    try:
        page.goto(f"{app_url}/Compare?{QUERY}", wait_until="domcontentloaded")
        page.get_by_role("button", name="▶ Run").wait_for(timeout=RUN_TIMEOUT_S * 1000)
        wait_until_idle(page)
        page.get_by_role("button", name="▶ Run").click()
        page.get_by_text("Token states at step").wait_for(timeout=RUN_TIMEOUT_S * 1000)
        wait_until_idle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        shown = outputs(page)
        assert len(shown) == 4 and shown[0].startswith("full cache")  # the full cache and three policies
        assert page.locator(".kvviz-tokens").count() == 3  # token states side by side
        before = settings_shown(page)
        assert before["window"] == "4" and before["recent"] == "4" and before["step"] == "3"
        copied = page.url
        query = parse_qs(urlparse(copied).query)
        assert query["p2"] == ["snapkv:window=4,budget=12"] and query["step"] == ["3"]
        save_screenshot(page, "compare_run", width=1500, max_height=7000)
    finally:
        first.close()

    fresh = browser.new_context(viewport={"width": 1500, "height": 1200})  # another browser: nothing shared
    page = fresh.new_page()
    try:
        page.goto(copied, wait_until="domcontentloaded")
        page.get_by_text("Token states at step").wait_for(timeout=RUN_TIMEOUT_S * 1000)  # the link runs the view
        wait_until_idle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert settings_shown(page) == before
        assert outputs(page) == shown
    finally:
        fresh.close()
