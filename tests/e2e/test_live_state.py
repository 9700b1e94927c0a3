"""The Live page in a real Chromium, for what needs a browser: settings survive navigation, a demo
in one click marks the pass key, text in any language, two sessions apart, Stop during the
comparison, a quiet server log, and runs that survive a restart (or say they did not)."""

from __future__ import annotations

import os
import re
import urllib.parse

import pytest

from kvviz.record import examples as data
from tests.e2e.conftest import COUNTING_PROMPT, free_port, start_server, stop_server
from tests.e2e.test_browser import REPO, wait_until_idle

RUN_TIMEOUT_S = 600
SNAPKV_DEMO = next(n for n in data.PRESETS if "snapkv" in n)


def open_live(browser, url: str, query: dict | None = None):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(url + "/Live_Policy" + ("?" + urllib.parse.urlencode(query) if query else ""), wait_until="domcontentloaded")
    wait_until_idle(page, RUN_TIMEOUT_S)
    return page


def run_and_wait(page) -> None:
    page.get_by_role("button", name="▶ Run").click()
    page.locator('[data-testid="stMetric"]', has_text="Whole run").wait_for(timeout=RUN_TIMEOUT_S * 1000)
    wait_until_idle(page, RUN_TIMEOUT_S)


def main_text(page) -> str:
    return page.locator('[data-testid="stMain"]').inner_text()


def test_a_demo_survives_navigation_and_rings_the_pass_key(browser, app_url):
    page = open_live(browser, app_url)
    try:
        page.get_by_text("Demos in one click").click()
        page.get_by_role("button", name=SNAPKV_DEMO).click()
        wait_until_idle(page)
        page.locator('[data-testid="stSidebarNav"] a[href$="/Attention"]').click()
        wait_until_idle(page, RUN_TIMEOUT_S)
        page.locator('[data-testid="stSidebarNav"] a[href$="/Live_Policy"]').click()
        wait_until_idle(page, RUN_TIMEOUT_S)
        # everything the demo set is still set after visiting another page
        assert page.get_by_role("combobox", name="Policy").input_value().startswith("snapkv")
        assert page.get_by_role("spinbutton", name="window").input_value() == "8"
        sidebar = page.locator('[data-testid="stSidebarUserContent"]')
        assert sidebar.get_by_role("combobox", name="Example").input_value() == data.PASSKEY_EXAMPLE
        page.get_by_text("Compare with full cache", exact=True).click()  # one pass: quicker on a CPU
        wait_until_idle(page)
        run_and_wait(page)
        text = main_text(page)
        assert "snapkv window=8 · 25%" in text and "`snapkv:window=8" not in text  # the settings, not markdown
        key = re.search(r"The hidden pass key (\d+)", text).group(1)
        ringed = page.locator(".kvviz-tokens .tok.mark")
        assert ringed.count() >= 2 and key in "".join(ringed.all_inner_texts()).replace(" ", "")
        if os.environ.get("KVVIZ_SCREENSHOTS") == "1":
            out = REPO / "docs" / "screenshots" / "live_policy_run.png"
            height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
            page.set_viewport_size({"width": 1400, "height": min(max(int(height), 1000), 6000)})
            page.wait_for_timeout(500)
            page.screenshot(path=str(out), full_page=True)
        page.get_by_role("tab", name="Run details").click()
        details = page.locator('[data-testid="stTable"]').inner_text()
        assert "snapkv:window=8" in details, details
        assert key in details, details  # the output carries the key
        assert "{" not in details  # readable, not raw JSON
    finally:
        page.close()


def test_text_in_any_language_shows_whole_characters(browser, app_url):
    prompt = "🙂🙂 KV缓存是什么？ שלום e\u0301"
    page = open_live(browser, app_url, {"example": "Custom", "prompt": prompt, "policy": "window:budget=20", "new": 3, "compare": 0, "chat": 1})
    try:
        run_and_wait(page)
        view = page.locator(".kvviz-tokens").first
        shown = view.inner_text().split("▌output:")[0]  # the prompt (a 135M model may well emit stray bytes)
        assert "\ufffd" not in shown and "🙂🙂" in shown.replace(" ", "") and "缓存" in shown.replace(" ", "")
        assert "שלום" in shown.replace(" ", "") and "e\u0301" in shown
        emoji = view.locator(".tok", has_text="🙂").first
        assert "byte-level tokens" in emoji.get_attribute("title")
    finally:
        page.close()


def test_two_sessions_never_see_each_others_results(browser, app_url):
    first = open_live(browser, app_url, {"example": data.CHAT_EXAMPLE, "policy": "window:budget=16", "new": 2, "compare": 0})
    second_context = browser.new_context()
    try:
        run_and_wait(first)
        assert "Whole run" in main_text(first)
        second = second_context.new_page()
        second.goto(app_url + "/Live_Policy", wait_until="domcontentloaded")
        wait_until_idle(second, RUN_TIMEOUT_S)
        assert "Press Run to generate" in main_text(second) and "Whole run" not in main_text(second)
    finally:
        first.close()
        second_context.close()


def test_stop_during_the_comparison_says_which_phase(browser, app_url):
    # the full cache counts to 130 (a window of 16 loses the count and repeats "12,")
    page = open_live(browser, app_url, COUNTING_PROMPT | {"policy": "window:budget=16", "new": 120, "compare": 1})
    try:
        page.get_by_role("button", name="▶ Run").click()
        page.get_by_text(re.compile(r"Generating with the full cache, for the comparison: [1-9]")).wait_for(timeout=RUN_TIMEOUT_S * 1000)
        page.get_by_role("button", name="■ Stop").click()
        page.get_by_text("Stop came during the full cache's run").wait_for(timeout=RUN_TIMEOUT_S * 1000)
        assert "Stopped during the policy's own run" not in main_text(page)
    finally:
        page.close()


def test_stop_while_a_long_prompt_is_read(browser, app_url):
    # the long example is 4,345 tokens: h2o reads it in a minute or more on a 2-core CPU
    page = open_live(browser, app_url, {"example": data.LONG_EXAMPLE, "policy": "h2o", "new": 8, "compare": 1})
    try:
        page.get_by_role("button", name="▶ Run").click()
        page.get_by_text(re.compile(r"Generating with the policy: reading the prompt \(4\d{3} tokens\)")).wait_for(timeout=RUN_TIMEOUT_S * 1000)
        page.get_by_role("button", name="■ Stop").click()
        page.get_by_text("Stopped while the model read the prompt").wait_for(timeout=RUN_TIMEOUT_S * 1000)
        text = main_text(page)
        assert "nothing was generated" in text and "Whole run" not in text
        assert page.get_by_role("button", name="▶ Run").is_enabled()  # ready for the next run
        assert page.locator('[data-testid="stException"]').count() == 0
    finally:
        page.close()


def test_the_server_log_stays_quiet(app_server, browser):
    url, log = app_server
    page = open_live(browser, url)
    page.close()
    text = log.read_text()
    assert "Inotify" not in text and "Traceback" not in text


@pytest.fixture()
def own_server(smollm, tmp_path):
    port, log = free_port(), tmp_path / "streamlit.log"
    servers = [start_server(port, log)]
    yield f"http://127.0.0.1:{port}", port, log, servers
    for s in servers:
        stop_server(s)


def test_runs_survive_a_restart_or_say_they_did_not(browser, own_server):
    url, port, log, servers = own_server
    page = open_live(browser, url, {"example": data.CHAT_EXAMPLE, "policy": "window:budget=16", "new": 3, "compare": 0})
    try:
        run_and_wait(page)
        output = page.locator(".kvviz-tokens").first.inner_text()
        run_id = urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)["run"][0]
        stop_server(servers.pop())
        servers.append(start_server(port, log))
        # the tab's websocket does not rerun the page on the new server by itself (Streamlit 1.67's
        # server); the user reloads it, or opens the shared link: the run comes back from the store
        page.reload()
        page.get_by_text("Reopened from the run store").wait_for(timeout=RUN_TIMEOUT_S * 1000)
        assert page.locator(".kvviz-tokens").first.inner_text() == output
        assert run_id in page.url

        # a run the restart cuts short says so (a counting prompt: a chat answer could end at EOS
        # after a few tokens, before the restart, and then there would be nothing to cut short)
        slow = open_live(browser, url, COUNTING_PROMPT | {"policy": "window:budget=16", "new": 200, "compare": 0})
        slow.get_by_role("button", name="▶ Run").click()
        slow.get_by_text(re.compile(r"Generating with the policy: [1-9]")).wait_for(timeout=RUN_TIMEOUT_S * 1000)
        stop_server(servers.pop())
        servers.append(start_server(port, log))
        slow.reload()
        slow.get_by_text("was interrupted: the server stopped before it finished").wait_for(timeout=RUN_TIMEOUT_S * 1000)
        slow.close()
        assert page.locator('[data-testid="stException"]').count() == 0
    finally:
        page.close()
