"""docs/PERFORMANCE.md's widget-maxima numbers are the committed results file's, and the file
says when, where and how it was measured and that no chart passed the limit (issue 24)."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("widget_maxima", ROOT / "benchmarks" / "widget_maxima.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_performance_text_is_rendered_from_the_results():
    bench = load_bench()
    results = json.loads(bench.RESULTS.read_text())
    assert results["date"] and results["machine"] and results["command"].startswith("python benchmarks/widget_maxima.py")
    assert results["slowest_s"] == max(r["chart_s"] for r in results["rows"]) <= results["limit_s"]
    text = (ROOT / "docs" / "PERFORMANCE.md").read_text()
    after = text.split(bench.SUMMARY_MARK, 1)[1].lstrip("\n").split("\n\n", 1)[0].strip()
    assert after == bench.summary(results)
    # every chart the paged page draws is in the walk (its builders, by name)
    assert {r["chart"] for r in results["rows"]} >= {"pool_grid", "block_tables", "usage_over_steps", "event_lines", "waste_bars", "fits_bars",
                                                    "memory_figure"}
    assert {r["page"] for r in results["rows"]} == set(bench.PAGES)  # every page the benchmark walks is in the file
