"""The speed tables of README.md and docs/PERFORMANCE.md are renderings of the committed bench
results they cite (benchmarks/speed_tables.py): no number in them can drift from its file."""

from __future__ import annotations

import json

from benchmarks import speed_tables as st


def test_every_speed_table_is_the_rendering_of_its_results_file():
    for doc in st.DOCS:
        text = doc.read_text()
        found = st.blocks(text)
        assert found, f"{doc.name} has no marked speed table"
        for kind, path, body in found:
            assert path.exists(), f"{doc.name} cites {path}, which is not committed"
            assert body == st.render(kind, path), f"{doc.name}'s {kind} table differs from {path.name}: run `python benchmarks/speed_tables.py --write`"


def test_the_summary_by_hand(tmp_path):
    row = {"config": "transformers generate", "policy": "", "step_ms": 20.0, "call_s": 3.0, "speedup": 1.0, "speedup_static": 0.2}
    fast = {"config": "h2o · 25%", "policy": "h2o:ratio=0.25", "step_ms": 8.0, "call_s": 1.25, "decode_path": "graph", "speedup": 2.5, "speedup_static": 0.5}
    data = {"card": "X", "dtype": "bfloat16", "torch": "t", "transformers": "5", "commit": "c", "model": "m", "prompt_tokens": 8,
            "new_tokens": 4, "repeats": 1, "bandwidth_bytes_s": None, "weight_bytes": 1, "rows": [row, fast]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    lines = st.render("summary", path).splitlines()
    assert lines[2] == "| transformers generate | 20.00 | 1.00 | 0.20 | 3.00 s |"
    assert lines[3] == "| kvviz `h2o · 25%` (CUDA graph) | 8.00 | 2.50 | 0.50 | 1.25 s |"
    doc = f"a\n<!-- speed table: summary {path} -->\nold\n<!-- end speed table -->\nb\n"
    assert st.rendered(doc) == f"a\n<!-- speed table: summary {path} -->\n" + st.render("summary", path) + "<!-- end speed table -->\nb\n"
