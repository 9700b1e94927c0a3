"""Home and Dedup opened with lang=zh: the page's own text (titles, markdown, captions, notices,
widget labels, metric labels, chart titles and axes) has no English sentence left. Kept English terms
(KV cache, token, KL, ...) are allowed; model output and token text are not the page's own text."""

from __future__ import annotations

import json
import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")
DEDUP = str(REPO / "pages" / "8_Dedup.py")
SPAN = "The harbor light turns every ten seconds"
PROMPT = f"Note: {SPAN}. Again: {SPAN}. How often?"

# Terms Chinese technical writing keeps in English, and names.
MODEL_OUTPUT = "完整缓存生成的后续 token："  # Dedup's caption of the model's own output
KEPT = ["KV cache", "teacher forcing", "SmolLM2-135M-Instruct.Q4_1", "Language"]
WORD = r"[A-Za-z][A-Za-z0-9_.'’-]*"
ENGLISH_RUN = re.compile(rf"{WORD}(?:[ ,]+{WORD}){{2,}}")  # three English words in a row


def english_runs(text: str) -> list[str]:
    for term in KEPT:
        text = text.replace(term, "·")
    return ENGLISH_RUN.findall(text)


def test_the_detector():
    assert english_runs("Load a model in the sidebar.") == ["Load a model in the sidebar."]
    assert not english_runs("每个 token 的 KV cache · 与完整缓存的 KL（均值，nats）· 30 层 · GQA")


def page_text(at: AppTest) -> list[str]:
    texts = [e.value for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success")
             for e in getattr(at, kind)]
    for kind in ("selectbox", "radio", "text_area", "text_input", "slider", "checkbox", "toggle", "button", "number_input"):
        for widget in getattr(at, kind):
            texts.append(widget.label)
            texts.extend(str(o) for o in getattr(widget, "options", []) or [])
            texts.append(getattr(widget, "placeholder", "") or "")
    texts += [m.label for m in at.metric]
    for chart in at.get("plotly_chart"):
        layout = json.loads(chart.proto.spec)["layout"]
        texts.append(layout.get("title", {}).get("text", ""))
        texts += [axis.get("title", {}).get("text", "") for name, axis in layout.items() if name.startswith(("xaxis", "yaxis"))]
    return texts


def assert_chinese(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]
    own = [t for t in page_text(at) if not t.startswith(MODEL_OUTPUT)]
    left = [(t, english_runs(t)) for t in own if english_runs(t)]
    assert not left, left


def test_home_in_chinese(smollm):
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["lang"] = "zh"
    at.run()
    assert_chinese(at)
    assert at.title[0].value == "kvviz：深入 KV cache" and at.sidebar.radio(key="_kvviz_lang").value == "zh"
    # the switch back to English: the page's English, byte for byte
    at.sidebar.radio(key="_kvviz_lang").set_value("en").run()
    assert at.title[0].value == "kvviz: inside the KV cache" and "lang" not in at.query_params


def test_an_unknown_language_in_a_link_is_named(smollm):
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params["lang"] = "<i>xx</i>"
    at.run()
    assert not at.exception and at.title[0].value == "kvviz: inside the KV cache"
    warnings = " ".join(w.value for w in at.sidebar.warning)
    assert "link setting 'lang' ignored" in warnings and "<i>" not in warnings


def test_dedup_in_chinese_after_a_run(smollm):
    at = AppTest.from_file(DEDUP, default_timeout=600)
    at.query_params["lang"] = "zh"
    at.run()
    assert_chinese(at)
    at.text_area(key="dedup.text").set_value(PROMPT)
    at.slider(key="dedup.new_tokens").set_value(1)
    at.button(key="dedup.run").click().run()
    assert not at.error, [e.value for e in at.error]
    assert_chinese(at)
    assert at.subheader[0].value == "重复片段" and len(at.get("plotly_chart")) == 2
