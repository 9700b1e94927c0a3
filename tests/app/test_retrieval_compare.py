"""AppTest of the Compare page with retrieval beside eviction at the same budget (issue 27): a
link with snapkv holding 12 entries per head and quest reading 12 opens both columns; snapkv's
K/V held is below the full cache's, quest's equals it (retrieval keeps every entry), and each
column's output equals an independent engine run."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from kvviz.policies.spec import PolicySpec
from kvviz.record.text import encode_prompt
from kvviz.runtime import engine

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "3_Compare.py")
LINK = {"p1": "snapkv:window=4,budget=12", "p2": "quest:read_budget=12,page_size=4", "same": "0", "new": "3", "step": "1"}


def test_snapkv_beside_quest_at_the_same_budget(smollm):
    at = AppTest.from_file(PAGE, default_timeout=600)
    for key, value in LINK.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    result = at.session_state["compare.result"]
    assert [r.spec.to_text() for r in result.runs][:2] == [LINK["p1"], LINK["p2"]]
    ids = encode_prompt(smollm.tokenizer, result.settings.prompt_text, chat=result.settings.chat)
    full = engine.run(smollm.model, smollm.tokenizer, ids, "full", max_new_tokens=3)
    summary = [d.value for d in at.dataframe if "kv_bytes" in d.value.columns][0]
    for i, text in enumerate([LINK["p1"], LINK["p2"]]):
        alone = engine.run(smollm.model, smollm.tokenizer, ids, PolicySpec.parse(text), max_new_tokens=3)
        assert summary["kv_bytes"][i + 1] == alone.kv_bytes[1]
        assert summary["output"][i + 1] == alone.generated_text
    assert summary["kv_bytes"][1] < full.kv_bytes[1] and summary["kv_bytes"][2] == full.kv_bytes[1]
