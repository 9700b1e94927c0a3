"""What a visitor's text may become in a page's HTML.

Pages hold two kinds of ``st.html``: the ones that carry visitor text (prompts, tokens, bundle
names) run no JavaScript, and a few of kvviz's own (``kvviz/ui/a11y.py``: scroll into view, hide
unnamed sparkline marks) run scripts and carry no visitor text. These helpers hold both halves."""

from streamlit.testing.v1 import AppTest

# what the hostile test strings carry that kvviz's own scripts never do
VISITOR_MARKS = ("__pwned", "alert(", "onerror", "javascript:", "<img")


def visitor_html(at: AppTest) -> list[str]:
    """The bodies of the page's ``st.html`` elements that run no script (where visitor text may
    go), after checking that the ones that do run scripts carry none of it."""
    bodies = []
    for element in at.get("html"):
        body = element.proto.body
        if element.proto.unsafe_allow_javascript:
            assert not any(mark in body for mark in VISITOR_MARKS), body
        else:
            bodies.append(body)
    return bodies
