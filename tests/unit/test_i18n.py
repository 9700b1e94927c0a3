"""The Chinese catalog against the source: every string marked for translation (extracted in-process
with Babel, as `make messages` does) has a translation with the same {placeholders}, and English is
the marked string itself, unchanged."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from kvviz import i18n
from kvviz.charts import dedup as dedup_charts
from kvviz.record import examples as data

REPO = Path(__file__).resolve().parents[2]


def extracted() -> dict[str, str]:
    """msgid -> where it is used, for every string babel.cfg's files mark with _(), ngettext or N_."""
    with (REPO / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)
    keywords = {**DEFAULT_KEYWORDS, "N_": None}
    found = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(str(REPO), method_map, options_map, keywords=keywords):
        msgid = message[0] if isinstance(message, tuple) else message  # ngettext: the catalog keys a plural by its singular
        found.setdefault(msgid, f"{filename}:{lineno}")
    return found


@pytest.fixture(scope="module")
def catalog():
    with i18n.catalog_path("zh").open("rb") as f:
        return read_po(f, locale="zh_CN")


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_every_marked_string_has_a_chinese_translation(catalog):
    found = extracted()
    assert len(found) > 100  # the sidebar, the navigation, Home and Dedup at least
    assert "Load a model in the sidebar." in found and "Passkey retrieval" in found  # a page's string, an N_-marked one
    def translated(msgid: str) -> bool:
        m = catalog.get(msgid)
        return m is not None and not m.fuzzy and bool(m.string) and all(m.string if isinstance(m.string, tuple) else [m.string])

    missing = [f"{where}: {msgid!r}" for msgid, where in found.items() if not translated(msgid)]
    assert not missing, "run `make messages` and translate these:\n" + "\n".join(missing)


def test_placeholders_are_the_same_in_both_languages(catalog):
    bad = []
    for message in catalog:
        if message.id and message.string:
            for one_id, one_str in zip([message.id] if isinstance(message.id, str) else message.id,
                                       [message.string] if isinstance(message.string, str) else message.string):
                if placeholders(one_id) != placeholders(one_str):
                    bad.append((one_id, one_str))
    assert not bad, bad
    # and every translation formats with its own placeholders
    zh = i18n.translations("zh")
    assert zh.gettext("{n} tokens").format(n="1,234") == "1,234 个 token"
    assert zh.gettext("Dedup") == "去重" and zh.gettext(data.PASSKEY_EXAMPLE) != data.PASSKEY_EXAMPLE


def test_english_is_the_marked_string_and_the_default_outside_streamlit():
    assert i18n.current_language() == "en"
    assert i18n._("Load a model in the sidebar.") == "Load a model in the sidebar."
    assert i18n.translations("en").gettext("Dedup") == "Dedup" and i18n.translations("xx").gettext("Dedup") == "Dedup"
    fig = dedup_charts.deviation_figure([0.0, 0.1], [0.0, 0.2])  # the chart's English, byte for byte
    assert fig.layout.title.text.startswith("How far the copy is from the full cache, per layer")
    assert fig.data[0].name == "keys (re-rotated)" and fig.data[0].hovertemplate == "layer %{x}: keys (re-rotated) %{y:.3f}<extra></extra>"
    rows = [{"share": 0.0, "kl_mean": 0.5, "top1_agreement": 1.0, "kv_bytes": 10}]
    rec = dedup_charts.recompute_figure(rows, 20)
    assert rec.data[0].hovertemplate == "%{x:.0f}% recomputed: KL %{y:.4f}, %{text}<extra></extra>" and rec.data[0].text == ("top-1 100%",)


def test_no_compiled_catalog_is_kept():
    assert not list((REPO / "kvviz" / "locale").rglob("*.mo"))


def test_a_bound_function_keeps_the_language_it_was_made_in(monkeypatch):
    monkeypatch.setattr(i18n, "_language_source", lambda: "zh")
    label = i18n.bound(lambda word: i18n._(word))
    assert label("Dedup") == "去重"
    monkeypatch.setattr(i18n, "_language_source", None)  # after the script run: no session
    assert i18n._("Dedup") == "Dedup" and label("Dedup") == "去重"
    assert i18n.current_language() == "en"  # the pin is only for the call


def test_no_marked_string_hides_in_an_f_string():
    """Babel does not read inside f-strings: a ``_("...")`` there is never extracted, so the page
    shows it in English whatever the catalog holds (found once on Compare)."""
    import ast

    hidden = []
    for path in [*(REPO / "kvviz").rglob("*.py"), *(REPO / "pages").glob("*.py"), REPO / "app.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                hidden += [f"{path.relative_to(REPO)}:{call.lineno}" for call in ast.walk(node)
                           if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in ("_", "ngettext", "N_")
                           and call.args and isinstance(call.args[0], ast.Constant)]  # _(a variable) is looked up, not extracted
    assert not hidden, hidden
