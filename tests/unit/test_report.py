"""Standalone HTML reports: self-contained, and hostile text stays text."""

from html.parser import HTMLParser

import pandas as pd
import plotly.graph_objects as go

from kvviz.record.report import Report

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_embeds_plotly_once_and_escapes_everything():
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4], name=HOSTILE))
    r = Report(f"Sweep {HOSTILE}", intro=HOSTILE, settings={"prompt": HOSTILE, "ratios": [0.1, 0.5]})
    r.add("Pareto", fig).add("Again", go.Figure(fig)).add("Table", pd.DataFrame({"policy": [HOSTILE], "ppl": [22.123456]})).add("Text", HOSTILE)
    text = r.to_html()
    parser = Tags()
    parser.feed(text)
    scripts = [a for t, a in parser.tags if t == "script"]
    assert not [a for t, a in parser.tags if t == "img"]  # the hostile <img> never became a tag
    assert all("src" not in a for a in scripts)  # nothing loaded from a server
    assert text.count("Plotly.newPlot") == 2 and len([s for s in scripts if not s]) >= 2
    one = Report("one").add("Pareto", fig).to_html()
    assert len(one) > 1_000_000 and len(text) < 1.2 * len(one)  # plotly.js (megabytes) embedded once
    assert "&lt;script&gt;alert" in text and "22.12" in text and "[0.1, 0.5]" in text
