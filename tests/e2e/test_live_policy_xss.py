"""A prompt full of HTML and scripts, run through a policy on the Live policy page in a real
Chromium: nothing runs, and the text is visible as typed."""

from __future__ import annotations

import time

HOSTILE = (
    "<script>window.__pwned=1</script> "
    '<img src=x onerror="window.__pwned=1"> '
    "<svg onload=window.__pwned=1></svg> "
    "[click](javascript:window.__pwned=1) **bold** $x^2$ done"
)
RUN_TIMEOUT_S = 600  # a CPU run on a busy machine


def test_hostile_prompt_runs_as_text(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        page.goto(app_url + "/Live_Policy", wait_until="domcontentloaded")
        run = page.get_by_role("button", name="▶ Run")
        run.wait_for(timeout=RUN_TIMEOUT_S * 1000)

        # the sidebar's free-text prompt
        sidebar = page.locator('[data-testid="stSidebarUserContent"]')
        sidebar.get_by_label("Example").click()
        page.get_by_role("option", name="Custom").click()
        prompt = sidebar.get_by_label("Your prompt")
        prompt.wait_for()
        prompt.fill(HOSTILE)
        prompt.press("Control+Enter")  # commit the text area
        page.get_by_text("Prompt: Custom").wait_for(timeout=60_000)

        # a short run without the comparison: 4 new tokens
        thumb = page.get_by_role("slider", name="New tokens")
        thumb.focus()
        thumb.press("Home")
        for _ in range(3):
            thumb.press("ArrowRight")
        page.get_by_role("checkbox", name="Compare with full cache").uncheck(force=True)
        time.sleep(1)
        page.get_by_role("button", name="▶ Run").click()
        page.get_by_role("tab", name="Run details").wait_for(timeout=RUN_TIMEOUT_S * 1000)

        assert page.evaluate("() => window.__pwned") is None
        assert dialogs == []
        assert page.locator("img[src='x']").count() == 0
        assert page.locator('[data-testid="stException"]').count() == 0
        tokens = page.locator(".kvviz-tokens").first
        tokens.wait_for()
        shown = tokens.inner_text()
        assert HOSTILE in shown, shown  # every character visible as typed
        assert "output:" in shown
        # the hover title of a token says what it is, as text
        title = tokens.locator(".tok").filter(has_text="script").first.get_attribute("title")
        assert "script" in title and "state:" in title
    finally:
        page.close()
