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
    # every chart each page draws is in the walk (its builders, by name, per page)
    drawn = {(r["page"], r["chart"]) for r in results["rows"]}
    expected = {
        "paged": {"pool_grid", "block_tables", "usage_over_steps", "event_lines", "waste_bars", "fits_bars"},
        "calculator": {"memory_figure"},
        "live": {"tokens_html", "token_states_figure", "retention_steps_figure", "retention_layers_figure", "occupancy_figure",
                 "comparison_html", "output_comparison_figure", "agreement_figure", "kv_bytes_figure", "quant_error_figure",
                 "residual_window_figure"},
        "attention": {"overview_figure", "detail_figure", "view_csv", "attention_tokens_html", "lost_mass_figure", "profile_figure"},
        "compare": {"outputs_html", "memory_figure", "agreement_figure", "report"},
        "tradeoffs": {"pareto_figure", "passkey_figure", "sweep_report"},
        "quant_lab": {"magnitude_figure", "token_profile_figure", "error_grid_figure", "next_token_figure", "residual_window_figure"},
        "dedup": {"deviation_figure", "recompute_figure"},
    }
    assert set(expected) == set(bench.PAGES)
    for name, charts in expected.items():
        if name in results["measured"]:
            assert {(name, c) for c in charts} <= drawn, name
    # every page of the benchmark is in the file, each with when it was measured
    assert {r["page"] for r in results["rows"]} == set(bench.PAGES)
    assert set(results.get("measured", {})) == {r["page"] for r in results["rows"]}  # when each page was measured
