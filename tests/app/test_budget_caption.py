"""The budget's caption says a share only when it is one (issue 24: 'Keeps 10000 of 7 tokens
(142857%)'): a budget past the prompt keeps all of it and says how much room is left."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from kvviz.ui.policy_controls import budget_caption

LIVE = str(Path(__file__).resolve().parents[2] / "pages" / "2_Live_Policy.py")


def test_budget_caption_by_hand():
    assert budget_caption(3, 12) == "Keeps 3 of 12 prompt tokens (25%) per layer and KV head."
    assert budget_caption(7, 7).startswith("Keeps all 7 prompt tokens (budget 7): nothing")
    past = budget_caption(10_000, 7)
    assert past == ("Keeps all 7 prompt tokens (budget 10,000); the other 9,993 entries are for generated tokens: "
                    "nothing is evicted until the cache passes 10,000 entries.")
    assert "%" not in past


def test_the_live_page_caption_for_a_budget_past_the_prompt(smollm):
    at = AppTest.from_file(LIVE, default_timeout=600)
    at.query_params["policy"] = "h2o:budget=10000"
    at.run()
    assert not at.exception
    captions = [c.value for c in at.caption if "prompt tokens" in c.value and "Keeps" in c.value]
    assert captions and all("%" not in c and "budget 10,000" in c for c in captions), captions
