"""The quantization lab's figures, built from hand-made numbers (no model, no torch)."""

import numpy as np

from kvviz.charts import quant_lab as charts
from kvviz.charts.style import COLORS, VERMILLION


def stats():
    rng = np.random.default_rng(0)
    key_abs = np.abs(rng.normal(size=(10, 8)))
    key_abs[:, 3] *= 20  # an outlier channel
    value_abs = np.abs(rng.normal(size=(10, 8)))
    return {
        "key_abs": key_abs, "value_abs": value_abs,
        "key_channel_max": key_abs.max(0), "value_channel_max": value_abs.max(0),
        "key_token_max": key_abs.max(1), "value_token_max": value_abs.max(1),
        "key_outliers": np.array([3]), "value_outliers": np.array([], dtype=int),
    }


def test_magnitude_figure_marks_the_outlier_channels():
    fig = charts.magnitude_figure(stats(), layer=2, head=1)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(heatmaps) == 2 and len(bars) == 2
    assert bars[0].marker.color[3] == VERMILLION and bars[0].marker.color[0] == COLORS["keys"]
    assert all(c == COLORS["values"] for c in bars[1].marker.color)
    assert "outlier key channels (> 3× the median channel's max): 3" in fig.layout.title.text


def test_error_grid_figure_one_line_per_axis_and_group_in_three_panels():
    rows = [
        {"axis": axis, "group": g, "bits": b, "key error": e, "value error": e / 2, "attention KL": e / 10, "bytes": 1000 * b}
        for axis, e0 in (("per_token", 0.4), ("per_channel", 0.2)) for g in (16, 32) for b, e in ((8, e0 / 64), (4, e0 / 4), (2, e0))
    ]
    fig = charts.error_grid_figure(rows)
    assert len(fig.data) == 4 * 3  # (axis, group) x panels
    first = fig.data[0]
    assert list(first.x) == ["8-bit", "4-bit", "2-bit"] and first.y[-1] == 0.4
    assert first.line.color == VERMILLION and fig.data[6].line.color == COLORS["kept"]
    assert fig.layout.yaxis.type == "log"


def test_residual_window_shades_the_full_precision_tokens():
    key_err = np.r_[np.full(32, 0.2), np.zeros(5)]
    value_err = np.r_[np.full(5, 0.3), np.zeros(32)]
    fig = charts.residual_window_figure(key_err, value_err, keys_full=5, values_full=32, residual=32)
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert sorted((r.x0, r.x1) for r in rects) == [(4.5, 36.5), (31.5, 36.5)]
    assert [t.name.split(" ")[0] for t in fig.data] == ["keys", "values"]


def test_next_token_figure_places_each_scheme_at_its_bytes():
    rows = [{"scheme": "per token, G=32", "bits": 4, "cache bytes": 2048, "mean KL": 0.5},
            {"scheme": "KIVI-2 (R=32, G=32)", "bits": 2, "cache bytes": 1024, "mean KL": 0.1}]
    fig = charts.next_token_figure(rows, full_bytes=8192)
    assert [(t.x[0], t.y[0]) for t in fig.data] == [(2.0, 0.5), (1.0, 0.1)]
    assert fig.data[1].marker.color == COLORS["generated"] and fig.data[0].marker.symbol == "square"
    assert fig.layout.shapes[0].x0 == 8.0  # the full cache: 8 KiB, a vertical line
    assert fig.layout.yaxis.type == "log"
