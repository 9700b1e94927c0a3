"""The README's faithfulness table is the rendering of what the tests measured
(benchmarks/results/faithfulness.json, written by tests/integration/test_authors_code.py with
KVVIZ_WRITE_RESULTS=1): text and measurements cannot drift apart."""

from __future__ import annotations

import json

from benchmarks import faithfulness_table as ft


def test_the_readmes_table_is_the_rendering_of_the_committed_measurements():
    assert ft.section_text(ft.README.read_text()) == ft.render(ft.load()), (
        "README.md's faithfulness section differs from benchmarks/results/faithfulness.json:"
        " run `python benchmarks/faithfulness_table.py --write`"
    )


def test_every_row_is_measured_and_says_what_differs():
    rows = ft.load()["rows"]
    assert list(rows) == ["snapkv", "pyramidkv", "kivi", "streaming_llm", "tova", "h2o", "think", "criticalkv", "duo_attention",
                          "kvzip"]
    for policy, row in rows.items():
        assert row["released"] and row["differs"], policy
        assert row["agreement"] and all(p["text"] and p["measured"] for p in row["agreement"]), policy


def test_record_merges_one_part_in_the_rows_order(tmp_path):
    path = tmp_path / "f.json"
    rows = {"a": {"released": "A", "differs": "dA", "parts": ["x", "y"]}, "b": {"released": "B", "differs": "dB", "parts": ["z"]}}
    ft.record("b", "z", "b z", {"n": 1}, rows=rows, meta={"prompt_tokens": 5}, path=path)
    ft.record("a", "y", "a y", {"n": 2}, rows=rows, meta={"prompt_tokens": 5}, path=path)
    ft.record("a", "x", "a x", {"n": 3}, rows=rows, meta={"prompt_tokens": 5}, path=path)
    ft.record("a", "x", "a x again", {"n": 4}, rows=rows, meta={"prompt_tokens": 5}, path=path)
    data = json.loads(path.read_text())
    assert list(data["rows"]) == ["a", "b"]
    assert [p["text"] for p in data["rows"]["a"]["agreement"]] == ["a x again", "a y"]
    table = ft.render(data)
    assert "| `a` | A | a x again; a y | dA |" in table and "| `b` | B | b z | dB |" in table
    readme = "# t\n\n" + ft.HEADING + "\n\nold text\n\n### Next\n"
    assert ft.section_text(ft.with_section(readme, table)) == table
    assert ft.with_section(readme, table).endswith("\n### Next\n")
