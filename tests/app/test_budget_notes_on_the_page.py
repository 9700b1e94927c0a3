"""The Live page says what the policy keeps at its budget before anything runs: its defaults give
no warning, and settings that do not fit the budget get one (by the note's level, not its words)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "2_Live_Policy.py")
TIMEOUT = 600


def test_defaults_are_clean_and_a_window_larger_than_the_budget_is_a_warning(smollm):  # smollm: weights cache warm
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="live.name").value == "h2o"
    assert [w.value for w in at.warning] == []
    captions = [c.value for c in at.caption]
    assert "With 9 entries per layer and KV head, h2o keeps the 8 most recent tokens (recent), and the 1 other entry" \
        " with the highest accumulated attention (heavy hitters)." in captions
    at.number_input(key="live.h2o.recent").set_value(16).run()
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and warnings[0].startswith("recent = 16 asks to protect more entries than the budget holds (9 ")
