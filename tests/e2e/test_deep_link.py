"""A link to a page, opened first on a freshly started server (the first visitor of a demo who
was sent a link): the page opens under the titled page list, with no "Page not found" dialog,
and keeps the settings the link carries."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from test_browser import wait_until_idle

from kvviz.ui import navigation


def test_a_link_opened_first_gets_the_titled_pages(browser, fresh_app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{fresh_app_url}/Live_Policy?policy=snapkv:window%3D8,ratio%3D0.5", wait_until="domcontentloaded")
        wait_until_idle(page)
        assert page.get_by_text("Page not found").count() == 0
        nav = [line.strip() for line in page.locator('[data-testid="stSidebarNav"]').inner_text().splitlines()]
        assert all(p.title in nav for p in [navigation.HOME] + navigation.PAGES), nav
        assert "app" not in nav and "Live Policy" not in nav  # not the file names
        assert page.get_by_role("heading", name="Live policy").count() == 1
        assert parse_qs(urlparse(page.url).query)["policy"] == ["snapkv:window=8,ratio=0.5"]
    finally:
        page.close()
