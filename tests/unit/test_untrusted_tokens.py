"""Token text is untrusted: scripts, HTML, markdown and control characters come out as text."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from live_synthetic import make_trace

from kvviz.record.token_states import Scope, TokenRecord, token_records, visible_text
from kvviz.ui.token_html import comparison_html, esc, legend_html, md_escape, stream_html, title, tokens_html

HOSTILE = [
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=1">',
    "' onmouseover='alert(1)' x='",
    '" onmouseover="alert(1)" x="',
    "**bold** _it_ [link](javascript:alert(1)) `code` $x^2$ # head",
    "</span></div><b>escaped?</b>",
    "&amp; &lt;",
    "bell\x07 nul\x00 esc\x1b[31m del\x7f",
    "rtl\u202eevil zero\u200bwidth line\u2028sep",
    "tab\there",
    "two\nlines\r\n",
]


class TagCollector(HTMLParser):
    """Tags, attributes and the text a browser shows (our own <style> block left out)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.text, self.in_style = [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        self.in_style = tag == "style"

    def handle_endtag(self, tag):
        self.in_style = False

    def handle_data(self, data):
        if not self.in_style:
            self.text.append(data)


def parse(html_text: str) -> TagCollector:
    p = TagCollector()
    p.feed(html_text)
    p.close()
    return p


def records_for(texts: list[str]) -> list[TokenRecord]:
    return [
        TokenRecord(position=i, text=t, state="kept", score=1.0, evicted_at_step=None, kept_share=1.0, generated=False)
        for i, t in enumerate(texts)
    ]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_token_is_text_in_the_token_view(text):
    out = tokens_html(records_for(["a", text, "b"]), step=0)
    p = parse(out)
    assert set(p.tags) <= {"style", "div", "span"}  # nothing but our own markup
    assert p.tags.count("style") == 1 and out.startswith("<style>")
    assert {name for name, _ in p.attrs} <= {"class", "style", "title", "data-pos"}
    assert "".join(p.text) == "a" + visible_text(text) + "b"  # what a person sees is what was typed
    assert "<script" not in out and "<img" not in out and "<b>" not in out
    for name, value in p.attrs:
        if name == "title":
            assert "<" not in value or "&lt;" in out  # angle brackets only ever as entities in the source


def test_scripts_and_handlers_are_escaped_not_dropped():
    out = tokens_html(records_for(HOSTILE[:2]), step=0)
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in out
    assert "&lt;img src=x onerror=&quot;window.__pwned=1&quot;&gt;" in out
    # and inside the hover title as well: the tooltip says what the token is, escaped
    assert 'title="#0 “&lt;script&gt;window.__pwned=1&lt;/script&gt;”' in out


def test_quotes_cannot_break_out_of_the_title_attribute():
    out = tokens_html(records_for(HOSTILE[2:4]), step=0)
    p = parse(out)
    assert not any(name.startswith("on") for name, _ in p.attrs)
    titles = [v for n, v in p.attrs if n == "title"]
    assert any("onmouseover='alert(1)'" in t for t in titles)
    assert any('onmouseover="alert(1)"' in t for t in titles)


def test_markdown_stays_literal():
    text = HOSTILE[4]
    out = tokens_html(records_for([text]), step=0)
    assert "**bold** _it_ [link](javascript:alert(1)) `code` $x^2$ # head" in out
    assert "<strong>" not in out and "<a " not in out
    escaped = md_escape(text)
    assert escaped.startswith(r"\*\*bold\*\* \_it\_ \[link\]\(javascript\:alert\(1\)\)")  # no autolink either
    assert r"\$x^2\$" in escaped and r"\`code\`" in escaped and r"\# head" in escaped
    assert md_escape("<b>x</b>") == r"\<b\>x\</b\>"


def test_control_characters_are_made_visible():
    assert visible_text("a\nb") == "a↵\nb"
    assert visible_text("tab\there") == "tab⇥here"
    assert visible_text("bell\x07 nul\x00 esc\x1b[31m del\x7f") == r"bell\x07 nul\x00 esc\x1b[31m del\x7f"
    assert visible_text("rtl\u202eevil zero\u200bwidth line\u2028sep") == r"rtl\u202eevil zero\u200bwidth line\u2028sep"
    assert visible_text("\r") == r"\x0d"
    assert visible_text("héllo wörld 你好 🙂") == "héllo wörld 你好 🙂"
    out = esc("a\x00<b>\n")
    assert out == "a\\x00&lt;b&gt;↵\n"
    assert "\x00" not in tokens_html(records_for(["\x00\x1b"]), step=0)


def test_title_lines_are_escaped_one_by_one():
    assert title('one <b>\ntwo "q"') == "one &lt;b&gt;&#10;two &quot;q&quot;"


def test_other_renderers_escape_too():
    for out in (
        stream_html(HOSTILE),
        comparison_html(HOSTILE, HOSTILE[::-1], 1, "<script>x</script>"),
        legend_html({"kept": 3}),
    ):
        p = parse(out)
        assert set(p.tags) <= {"style", "div", "span", "b", "i"}
        assert "<script" not in out and "<img" not in out
        assert not any(name.startswith("on") for name, _ in p.attrs)
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in stream_html(HOSTILE)


def test_records_of_a_trace_carry_hostile_text_unchanged():
    t = make_trace()
    recs = token_records(t, 1, Scope(0, 0))
    assert recs[2].text == " <script>"  # the record keeps the raw text; renderers escape it
    assert recs[3].text == "\n"
    out = tokens_html(recs, 1)
    assert "&lt;script&gt;" in out and "<script" not in out
    assert "↵" in out
