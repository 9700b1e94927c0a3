"""Standalone HTML reports: figures, tables and settings in one file that opens without a server.

Plotly's JavaScript is embedded once (in the first figure), so the file works offline. Every
string that comes from a user or a model (prompts, outputs, policy labels, table cells) is
escaped; figures carry their text as JSON, which plotly renders as text. No torch here.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import plotly.graph_objects as go

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1200px; color: #1F2937; padding: 0 1rem; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; } h2 { font-size: 1.25rem; margin-top: 2rem; }
.meta { color: #6B7280; font-size: .9rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }
th, td { border: 1px solid #E5E7EB; padding: .25rem .5rem; text-align: right; }
th { background: #F3F4F6; } td:first-child, th:first-child { text-align: left; }
pre { background: #F9FAFB; border: 1px solid #E5E7EB; padding: .6rem; white-space: pre-wrap; font-size: .85rem; }
"""


@dataclass
class Report:
    title: str
    intro: str = ""  # plain text, escaped
    settings: dict[str, Any] = field(default_factory=dict)  # shown as a table, values escaped
    sections: list[tuple[str, Any]] = field(default_factory=list)  # (heading, figure | DataFrame | str)

    def add(self, heading: str, content: Any) -> "Report":
        """Add a section: a plotly Figure, a pandas DataFrame, or plain text (escaped, kept as written)."""
        self.sections.append((heading, content))
        return self

    def to_html(self) -> str:
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
            f'<p class="meta">kvviz report, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>',
        ]
        if self.intro:
            parts.append(f"<p>{html.escape(self.intro)}</p>")
        if self.settings:
            rows = "".join(
                f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_text(v))}</td></tr>" for k, v in self.settings.items()
            )
            parts.append(f"<h2>Settings</h2><table>{rows}</table>")
        plotly_js: bool | str = True  # the first figure embeds plotly.js, the others reuse it
        for heading, content in self.sections:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
            if isinstance(content, go.Figure):
                parts.append(content.to_html(full_html=False, include_plotlyjs=plotly_js))
                plotly_js = False
            elif isinstance(content, pd.DataFrame):
                parts.append(content.to_html(index=False, escape=True, na_rep="", float_format=lambda x: f"{x:.4g}"))
            else:
                parts.append(f"<pre>{html.escape(str(content))}</pre>")
        parts.append("</body></html>")
        return "\n".join(parts)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)
