"""WCAG 2.1 A/AA in a real Chromium: axe-core (the copy shipped in the PyPI package
``axe-playwright-python``) finds no violation on any page after its run, every tab of the Live
page's result included.

Each page gets a small run from its link (the counting prompt, a few tokens), then its button is
pressed where it has one, and axe looks at the whole document: Streamlit's own chrome as well as
kvviz's content. Nothing is excluded: on Streamlit 1.67 its chrome passes with kvviz's theme.
"""

from __future__ import annotations

import re
import urllib.parse

import pytest
from test_browser import wait_until_idle

from tests.e2e.conftest import COUNTING_PROMPT

RUN_TIMEOUT_S = 900
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def axe_violations(page) -> list[dict]:
    """axe's violations of WCAG 2.1 A and AA on the page as it is now."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_21_AA}, "resultTypes": ["violations"]})
    return results.response["violations"]


def describe(violations: list[dict]) -> str:
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}, {len(v['nodes'])} nodes): {v['help']}")
        for node in v["nodes"][:4]:
            lines.append(f"    {node['target']}: {node.get('failureSummary', '').splitlines()[-1:]} {node['html'][:160]}")
    return "\n".join(lines)


def link(path: str, **params) -> str:
    return path + "?" + urllib.parse.urlencode(COUNTING_PROMPT | params)


def _run_live(page) -> list[str]:
    page.get_by_role("button", name="▶ Run").click()
    page.get_by_role("tab", name="Run details").wait_for(timeout=RUN_TIMEOUT_S * 1000)
    wait_until_idle(page)
    page.get_by_text("Token map (an overview for long prompts)").click()  # the map is checked too
    wait_until_idle(page)
    return [t.inner_text() for t in page.get_by_role("tab").all()]


def _run_compare(page) -> list[str]:
    page.get_by_role("button", name="▶ Run").click()
    page.get_by_text("Token states at step").wait_for(timeout=RUN_TIMEOUT_S * 1000)
    wait_until_idle(page)
    return []


def _run_tradeoffs(page) -> list[str]:
    page.get_by_role("button", name="▶ Run").click()
    page.get_by_role("button", name="Download the table (CSV)").wait_for(timeout=RUN_TIMEOUT_S * 1000)
    wait_until_idle(page)
    return []


def _run_paged(page) -> list[str]:
    page.get_by_role("button", name="Prefix sharing", exact=True).click()
    wait_until_idle(page)
    return []


def _run_calculator(page) -> list[str]:
    page.get_by_role("button", name=re.compile("How many 32k-token requests fit")).click()
    wait_until_idle(page)
    return []


def _run_quant_lab(page) -> list[str]:
    new_tokens = page.get_by_role("spinbutton", name="New tokens")
    new_tokens.fill("2")
    new_tokens.press("Enter")
    wait_until_idle(page)
    page.get_by_role("button", name="Run the model with quantized caches").click()
    page.locator('[data-testid="stPlotlyChart"]').nth(4).wait_for(timeout=RUN_TIMEOUT_S * 1000)
    wait_until_idle(page)
    return []


def _nothing(page) -> list[str]:
    return []


PAGES = {
    "Home": ("/", _nothing),
    "Attention": (link("/Attention"), _nothing),
    "Live_Policy": (link("/Live_Policy", new=4), _run_live),
    "Compare": (link("/Compare", p1="h2o:recent=4,budget=8", p2="snapkv:window=4,budget=8", p3="streaming_llm:budget=8", same=0, new=4), _run_compare),
    "Tradeoffs": (link("/Tradeoffs", policies="window\nstreaming_llm:n_sink=4", ratios="0.25", context="48", continuation="8", limit="30"), _run_tradeoffs),
    "Paged_Cache": ("/Paged_Cache", _run_paged),
    "Memory_Calculator": ("/Memory_Calculator", _run_calculator),
    "Quantization_Lab": (link("/Quantization_Lab"), _run_quant_lab),
}


@pytest.mark.parametrize("name", list(PAGES))
def test_no_wcag_violation_after_the_run(browser, app_url, name):
    path, run = PAGES[name]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(app_url + path, wait_until="domcontentloaded")
        wait_until_idle(page)
        tabs = run(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        found = {"(first view)": axe_violations(page)}
        for tab in tabs[1:]:  # every tab of the result: axe skips what is hidden
            page.get_by_role("tab", name=tab).click()
            wait_until_idle(page)
            found[tab] = axe_violations(page)
        report = "\n".join(f"{where}:\n{describe(v)}" for where, v in found.items() if v)
        assert not report, f"{name}: WCAG 2.1 A/AA violations\n{report}"
    finally:
        page.close()


def test_token_states_differ_without_colour(browser, app_url):
    """What the browser really draws for each chip state in the Live page's legend (the cascade
    included): an outline style, a weight, a strike. Checked on computed styles, so a rule that
    loses to another (e.g. the chips' own transparent border) fails here."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(app_url + link("/Live_Policy", new=4), wait_until="domcontentloaded")
        wait_until_idle(page)
        _run_live(page)
        legend = page.locator(".kvviz-legend").first
        legend.wait_for()
        drawn = page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('.kvviz-legend .tok')].map((el) => {
                const st = getComputedStyle(el);
                const state = [...el.classList].find((c) => c.startsWith('st-')).slice(3);
                return [state, [st.borderTopStyle, st.fontWeight, st.textDecorationLine, st.boxShadow !== 'none', st.color, st.backgroundColor]];
            }))"""
        )
        assert {"recent", "evicted", "evicted_now", "next"} <= set(drawn), drawn  # the states this run shows
        cues = {state: tuple(v[:4]) for state, v in drawn.items()}
        assert len(set(cues.values())) == len(cues), cues  # every state shown has a cue of its own, colour aside
        assert cues["recent"][0] == "dotted" and cues["next"][0] == "solid"
        assert "line-through" in cues["evicted"][2] and "line-through" in cues["evicted_now"][2]
    finally:
        page.close()

