"""Every page opened with ?lang=zh in a real Chromium (issue 19): the page's own visible text (the
main section: titles, intros, notices, widget labels and shown values, tabs, metrics, expanders;
the Plotly charts' titles, axis titles, annotations and legend names) has no English sentence left, as
tests/app/test_chinese_pages.py's detector finds them (three English words in a row, kept terms
aside). Not the page's own text: the sidebar's model and prompt boxes, text boxes and number
fields, code blocks, the model's output and token text (token views, chart tick labels), and the
titles of cited papers (the text of a link out: kept as written, as the policies' "Paper:" lines).
The Live page is read again after one short run (2 tokens, no comparison). Each page's
screenshot goes to /tmp/zh_shots/<page>.png."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from kvviz.ui import navigation
from tests.app.test_chinese_pages import MODEL_OUTPUT, english_runs
from tests.e2e.conftest import COUNTING_PROMPT
from tests.e2e.test_browser import wait_until_idle

PAGES = [("Home", "/")] + [(p.url_path, "/" + p.url_path) for p in navigation.PAGES]
SHOTS = Path("/tmp/zh_shots")
RUN_TIMEOUT_S = 300
LIVE_RUN = {**COUNTING_PROMPT, "new": 2, "compare": 0}  # one short run: 2 tokens, the policy alone

# Hidden while the main section's text is read (innerText skips what is not displayed): the model's
# output and token text, boxes holding what the visitor typed, code, the charts (read apart), and
# the titles of cited papers (links out: the policies' "Paper:" lines).
NOT_OWN = ".kvviz-tokens, textarea, input, pre, [data-testid='stCode'], [data-testid='stPlotlyChart'], a[href^='http']"
READ_TEXT = """(hide) => {
    const main = document.querySelector('[data-testid="stMain"]');
    const hidden = [...main.querySelectorAll(hide)];
    const before = hidden.map(e => e.style.display);
    hidden.forEach(e => e.style.display = 'none');
    const text = main.innerText;
    hidden.forEach((e, i) => e.style.display = before[i]);
    return text;
}"""
# a chart's own words: its title, axis titles, notes written on it (subplot titles), and the names
# its legend shows
READ_CHARTS = """() => [...document.querySelectorAll('[data-testid="stMain"] .js-plotly-plot')].flatMap(gd => {
    const layout = gd.layout || {}, words = [];
    const title = t => (typeof t === 'string' ? t : (t && t.text) || '');
    words.push(title(layout.title));
    for (const [k, axis] of Object.entries(layout)) if (/^[xy]axis/.test(k) && axis) words.push(title(axis.title));
    for (const note of layout.annotations || []) words.push(note.text || '');
    for (const trace of gd.data || []) if (trace.name && trace.showlegend !== false) words.push(trace.name);
    return words.filter(Boolean).map(w => w.replace(/<[^>]+>/g, ' '));
})"""


def own_text(page) -> list[str]:
    lines = page.evaluate(READ_TEXT, NOT_OWN).splitlines() + page.evaluate(READ_CHARTS)
    return [line for line in lines if line.strip() and not line.startswith(MODEL_OUTPUT)]


def screenshot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": min(max(int(height), 1000), 6000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def english_left(page, name: str) -> list[tuple[str, list[str]]]:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator('[data-testid="stException"]').first.inner_text()
    screenshot(page, name)
    return [(line, english_runs(line)) for line in own_text(page) if english_runs(line)]


def test_every_page_in_chinese(browser, app_url):
    # every page opens at once, each in its own tab: their waits for a quiet script overlap
    tabs = {}
    try:
        for name, path in PAGES:
            query = {"lang": "zh", **(LIVE_RUN if name == "Live_Policy" else {})}
            tabs[name] = browser.new_page(viewport={"width": 1400, "height": 1000})
            tabs[name].goto(app_url + path + "?" + urllib.parse.urlencode(query), wait_until="domcontentloaded")
        live = tabs["Live_Policy"]
        wait_until_idle(live, RUN_TIMEOUT_S)
        left = {"Live_Policy": english_left(live, "Live_Policy")}
        live.set_viewport_size({"width": 1400, "height": 1000})
        live.get_by_role("button", name="▶ 运行").click()  # the run goes on while the other pages are read
        for name, page in tabs.items():
            if name != "Live_Policy":
                wait_until_idle(page, RUN_TIMEOUT_S)
                left[name] = english_left(page, name)
        live.locator('[data-testid="stMetric"]', has_text="整次运行").wait_for(timeout=RUN_TIMEOUT_S * 1000)
        wait_until_idle(live, RUN_TIMEOUT_S)
        left["Live_Policy after a run"] = english_left(live, "Live_Policy_run")
    finally:
        for page in tabs.values():
            page.close()
    left = {name: runs for name, runs in left.items() if runs}
    if left:
        pytest.fail("English left in the page's own text:\n" + "\n".join(
            f"{name}: {line!r}" for name, runs in left.items() for line, _ in runs))
