"""Charts that lead to the run behind them, in a real Chromium: a click on a point of Tradeoffs'
Pareto chart chooses that run (its numbers shown, its row ticked in the table), and its Compare
link opens a new tab on Compare with the sweep's model, prompt (its first context tokens),
policies and budgets, which runs at once; there a click on the KL chart at a step moves the
token view's step slider to it. A tiny sweep (24 prompt tokens, 3 forced) keeps it short."""

from __future__ import annotations

import urllib.parse

from kvviz.record.examples import long_document
from tests.e2e.test_browser import save_screenshot, wait_until_idle

RUN_TIMEOUT_S = 300
SWEEP = {"policies": "window\nstreaming_llm", "ratios": "0.5", "context": "24", "continuation": "3", "limit": "60"}


def _click_point(page, points, k: int) -> None:
    """A mouse click on the k-th plotted point (plotly takes it on the drag layer above)."""
    points.nth(k).evaluate("e => e.scrollIntoView({block: 'center'})")  # a click past the viewport's edge goes nowhere
    page.wait_for_timeout(200)
    box = points.nth(k).bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_timeout(300)
    wait_until_idle(page)


def test_a_tradeoffs_point_opens_compare_and_its_kl_chart_moves_the_step(browser, app_url, smollm):
    context = browser.new_context(viewport={"width": 1400, "height": 1300})
    page = context.new_page()
    try:
        page.goto(app_url + "/Tradeoffs?" + urllib.parse.urlencode(SWEEP), wait_until="domcontentloaded")
        wait_until_idle(page)
        page.get_by_role("button", name="▶ Run").click()
        page.get_by_text("the lowest perplexity is").wait_for(timeout=RUN_TIMEOUT_S * 1000)
        wait_until_idle(page)
        chart = page.locator('[data-testid="stPlotlyChart"]').first
        # the window line's one point (trace 0); its hover names it
        _click_point(page, chart.locator(".scatterlayer .trace").first.locator("path.point"), 0)
        page.get_by_text("Chosen: 1 run").wait_for(timeout=30_000)
        assert page.get_by_text("window (ratio 0.5").count() == 1
        assert page.locator('[data-testid="stException"]').count() == 0
        link = page.get_by_role("link", name="Compare window:ratio=0.5 and streaming_llm:ratio=0.5")
        query = urllib.parse.parse_qs(urllib.parse.urlparse(link.get_attribute("href")).query)
        assert query["p1"] == ["window:ratio=0.5"] and query["p2"] == ["streaming_llm:ratio=0.5"] and query["same"] == ["0"]
        assert query["new"] == ["3"] and query["chat"] == ["0"] and query["example"] == ["Custom"]
        save_screenshot(page, "tradeoffs_chosen")
        with context.expect_page() as opened:
            link.click()
        compare = opened.value
        compare.get_by_text("Token states at step").wait_for(timeout=RUN_TIMEOUT_S * 1000)
        wait_until_idle(compare)
        assert compare.locator('[data-testid="stException"]').count() == 0
        # the sweep's prompt: its first 24 tokens, as the tokenizer reads the long document
        ids = smollm.tokenizer(long_document()).input_ids[:24]
        prompt = compare.get_by_role("textbox", name="Your prompt").input_value()
        assert prompt == smollm.tokenizer.decode(ids, skip_special_tokens=True)
        assert compare.get_by_text("prompt tokens · model").first.inner_text().startswith("24 prompt tokens")
        heads = compare.locator('[data-testid="stMain"]').get_by_text("· 50%")
        assert "window · 50%" in heads.all_inner_texts() and "streaming_llm · 50%" in heads.all_inner_texts()
        slider = compare.get_by_role("slider", name="Decode step, for every policy")
        assert slider.input_value() == "2"  # the last step (3 new tokens: steps 0..2)
        # a click on the KL line (the window policy's, trace 1) at step 1 moves the token view there
        kl = compare.locator('[data-testid="stPlotlyChart"]').nth(1).locator(".scatterlayer .trace").nth(1).locator("path.point")
        _click_point(compare, kl, 1)
        compare.get_by_text("Token states at step 1").wait_for(timeout=30_000)
        assert slider.input_value() == "1"
        assert compare.locator('[data-testid="stException"]').count() == 0
        save_screenshot(compare, "compare_from_tradeoffs")
    finally:
        context.close()
