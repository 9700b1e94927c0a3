"""The attention figure builders on hand-made matrices: pooling arithmetic, mask shading, labels,
evicted keys, selection, overview grouping, and escaping of token text."""

from __future__ import annotations

import numpy as np
import pytest

from kvviz.attention.maps import AttentionView, HeadProfiles, Overview, pool_matrix
from kvviz.charts import attention_detail as detail_charts
from kvviz.charts import attention_overview as overview_charts
from kvviz.charts._attention_common import LOG_FLOOR, color_values


def causal_matrix(n: int, seed: int = 0) -> np.ndarray:
    """A random row-stochastic lower-triangular (n, n) matrix."""
    rng = np.random.default_rng(seed)
    a = np.tril(rng.random((n, n)) + 0.01)
    return a / a.sum(1, keepdims=True)


def trace(fig, name):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


TOKENS = ["<s>", " The", " <b>cat</b>", "\n", " sat", " on", " the", " mat", "."]


def test_full_resolution_labels_values_and_log_colour():
    a = causal_matrix(9)
    view = AttentionView.from_matrix(a, max_cells=16)
    fig = detail_charts.detail_figure(view, TOKENS)
    heat = trace(fig, "attention")
    assert list(heat.x) == ["0 &lt;s&gt;", "1 ␣The", "2 ␣&lt;b&gt;cat&lt;/b&gt;", "3 ↵", "4 ␣sat", "5 ␣on", "6 ␣the", "7 ␣mat", "8 ."]
    assert list(heat.y) == list(heat.x)
    lower = np.tril(np.ones((9, 9), bool))
    np.testing.assert_allclose(np.asarray(heat.customdata, float)[lower], a[lower])
    np.testing.assert_allclose(np.asarray(heat.z, float)[lower], np.log10(a[lower]))
    assert heat.zmin == LOG_FLOOR and heat.zmax == 0
    assert detail_charts.token_label(12, " a very long token indeed") == "12 ␣a␣very␣long␣…"


def test_mask_shading_marks_exactly_the_future_keys():
    view = AttentionView.from_matrix(causal_matrix(9), max_cells=16)
    mask = np.asarray(trace(detail_charts.detail_figure(view, TOKENS), "causal mask").z, float)
    assert np.array_equal(~np.isnan(mask), np.triu(np.ones((9, 9), bool), 1))
    heat = np.asarray(trace(detail_charts.detail_figure(view, TOKENS), "attention").z, float)
    assert np.all(np.isnan(heat[np.triu_indices(9, 1)]))


def test_pooled_view_arithmetic_labels_and_mask():
    a = causal_matrix(10, seed=3)
    view = AttentionView.from_matrix(a, max_cells=4, pool="mean")  # tile 3: tiles 0-2, 3-5, 6-8, 9
    assert view.tile == 3 and view.values.shape == (4, 4)
    # tile (1, 0): queries 3..5, keys 0..2, all visible
    assert view.values[1, 0] == pytest.approx(a[3:6, 0:3].mean())
    # tile (1, 1): queries 3..5 x keys 3..5, only the 6 cells on or under the diagonal count
    assert view.values[1, 1] == pytest.approx(a[3:6, 3:6][np.tril_indices(3)].mean())
    # tile (3, 3): query 9 x key 9, a single cell
    assert view.values[3, 3] == pytest.approx(a[9, 9])
    fig = detail_charts.detail_figure(view, TOKENS + ["x"])
    heat = trace(fig, "attention")
    assert list(heat.x) == ["0–2", "3–5", "6–8", "9"]
    mask = ~np.isnan(np.asarray(trace(fig, "causal mask").z, float))
    assert np.array_equal(mask, np.triu(np.ones((4, 4), bool), 1))
    # the bars pool the per-key scores the same way
    bars = trace(fig, "key score")
    np.testing.assert_allclose(bars.y, [a[:, 0:3].sum(0).mean(), a[:, 3:6].sum(0).mean(), a[:, 6:9].sum(0).mean(), a[:, 9].sum()])
    assert list(bars.customdata) == [0, 3, 6, 9]
    ent = trace(fig, "row entropy")
    assert ent.orientation == "h" and len(ent.x) == 4
    assert "3×3 tokens per tile, mean" in fig.layout.title.text


def test_max_pooling_of_a_window():
    a = causal_matrix(20, seed=5)
    view = AttentionView.from_matrix(a, q_range=(8, 20), k_range=(2, 14), max_cells=5, pool="max")
    assert view.tile == 3
    np.testing.assert_allclose(view.values, pool_matrix(a[8:20, 2:14], 3, "max", q_start=8, k_start=2), equal_nan=True)
    assert view.values[0, 0] == pytest.approx(a[8:11, 2:5].max())
    fig = detail_charts.detail_figure(view)
    assert list(trace(fig, "attention").x)[:2] == ["2–4", "5–7"]
    assert list(trace(fig, "attention").y)[:2] == ["8–10", "11–13"]


def test_pool_positions_and_evicted_share():
    v = np.arange(10.0)
    np.testing.assert_allclose(detail_charts.pool_positions(v, 2, 9, 3, "max"), [4, 7, 8])
    np.testing.assert_allclose(detail_charts.pool_positions(v, 2, 9, 3, "mean"), [3, 6, 8])
    ev = np.array([0, 0, 1, 1, 1, 0, 1, 0, 0, 0], bool)
    np.testing.assert_allclose(detail_charts.evicted_share(ev, 0, 10, 4), [0.5, 0.5, 0])
    assert detail_charts.evicted_share(None, 0, 10, 4) is None


def test_evicted_keys_are_greyed_and_hatched():
    a = causal_matrix(9)
    evicted = np.zeros(9, bool)
    evicted[[2, 3, 5]] = True
    view = AttentionView.from_matrix(a, evicted=evicted)
    fig = detail_charts.detail_figure(view, TOKENS)
    heat = np.asarray(trace(fig, "attention").customdata, float)
    grey = np.asarray(trace(fig, "evicted keys").customdata, float)
    lower = np.tril(np.ones((9, 9), bool))
    for col in range(9):
        visible = lower[:, col]
        if evicted[col]:
            assert np.all(np.isnan(heat[:, col])) and np.allclose(grey[visible, col], a[visible, col])
        else:
            assert np.all(np.isnan(grey[:, col])) and np.allclose(heat[visible, col], a[visible, col])
    bars = trace(fig, "key score")
    assert [c == detail_charts.EVICTED_BAR for c in bars.marker.color] == evicted.tolist()
    assert [s == "/" for s in bars.marker.pattern.shape] == evicted.tolist()
    np.testing.assert_allclose(view.evicted_mass, a[:, evicted].sum(1))


def test_pooled_eviction_greys_tiles_mostly_evicted():
    a = causal_matrix(8)
    evicted = np.array([1, 1, 1, 0, 0, 0, 1, 1], bool)  # tiles of 3: all, none, all evicted
    view = AttentionView.from_matrix(a, evicted=evicted, max_cells=3)
    assert view.tile == 3
    grey = np.asarray(trace(detail_charts.detail_figure(view), "evicted keys").customdata, float)
    assert [not np.all(np.isnan(grey[:, c])) for c in range(3)] == [True, False, True]


def test_no_eviction_no_evicted_trace():
    fig = detail_charts.detail_figure(AttentionView.from_matrix(causal_matrix(5)))
    assert "evicted keys" not in [t.name for t in fig.data]


def test_selected_token_outlines_its_row_and_column():
    view = AttentionView.from_matrix(causal_matrix(12), max_cells=4)  # tile 3
    fig = detail_charts.detail_figure(view, selected_token=7)
    shapes = {s.name: s for s in fig.layout.shapes}
    row, col = shapes["selected row"], shapes["selected column"]
    assert (row.y0, row.y1) == (1.5, 2.5) and (row.x0, row.x1) == (-0.5, 3.5)  # token 7 is in tile 2
    assert (col.x0, col.x1) == (1.5, 2.5)
    zoomed = AttentionView.from_matrix(causal_matrix(12), q_range=(8, 12), k_range=(8, 12))
    names = [s.name for s in detail_charts.detail_figure(zoomed, selected_token=7).layout.shapes]
    assert "selected row" not in names and "selected column" not in names  # outside the window


def test_generated_boundary_is_drawn():
    view = AttentionView.from_matrix(causal_matrix(9), prompt_len=6)
    fig = detail_charts.detail_figure(view, TOKENS)
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 2 and {lines[0].x0, lines[1].y0} == {5.5}
    assert any("generated" in a.text for a in fig.layout.annotations)


def test_log_and_linear_colour():
    v = np.array([[1.0, np.nan], [1e-3, 1e-9]])
    np.testing.assert_allclose(color_values(v, "log"), [[0, np.nan], [-3, LOG_FLOOR]])
    np.testing.assert_allclose(color_values(v, "linear"), v)
    with pytest.raises(ValueError):
        color_values(v, "sqrt")


def make_overview(L=3, H=6, kv=2, g=4) -> Overview:
    rng = np.random.default_rng(0)
    thumbs = rng.random((L, H, g, g)).astype(np.float32)
    thumbs[:, :, np.triu_indices(g, 1)[0], np.triu_indices(g, 1)[1]] = np.nan
    prof = HeadProfiles(
        sink_mass=rng.random((L, H)), local_mass=rng.random((L, H)), entropy=rng.random((L, H)) * 3,
        norm_entropy=rng.random((L, H)), mean_distance=rng.random((L, H)) * 10,
        sink_tokens=4, local_tokens=16, from_query=16, n_kv_heads=kv,
    )
    return Overview(thumbs=thumbs, tile=5, pool="max", seq_len=20, prompt_len=20, n_kv_heads=kv, profiles=prof)


def test_overview_grid_places_every_head_and_groups_kv_heads():
    ov = make_overview()
    fig = overview_charts.overview_figure(ov, selected=(2, 4))
    step_x, y0 = overview_charts.overview_layout(6, 2, 4)
    assert list(y0) == [0, 6, 12, 22, 28, 34]  # a wider gap between the two KV groups
    z = np.asarray(trace(fig, "attention").z, float)
    np.testing.assert_allclose(z[y0[4] : y0[4] + 4, 2 * step_x : 2 * step_x + 4], color_values(ov.thumbs[2, 4]), equal_nan=True)
    mask = np.asarray(trace(fig, "causal mask").z, float)
    assert np.array_equal(~np.isnan(mask[0:4, 0:4]), np.triu(np.ones((4, 4), bool), 1))
    heads = trace(fig, "heads")
    assert len(heads.customdata) == 18 and list(heads.customdata[7]) == [1, 1]
    assert "KV head 0 (shared with heads 0, 2)" in heads.hovertext[1]
    bands = [s for s in fig.layout.shapes if s.name and s.name.startswith("KV head")]
    assert len(bands) == 2
    assert list(fig.layout.yaxis.ticktext) == ["q0 · kv0", "q1 · kv0", "q2 · kv0", "q3 · kv1", "q4 · kv1", "q5 · kv1"]
    sel = [s for s in fig.layout.shapes if s.name == "selected head"]
    assert len(sel) == 1 and sel[0].x0 < 2 * step_x < sel[0].x1 and sel[0].y0 < y0[4] < sel[0].y1


def test_profiles_figure_and_table():
    ov = make_overview()
    fig = overview_charts.profile_figure(ov.profiles, selected=(1, 2))
    pts = trace(fig, "heads")
    assert len(pts.x) == 18
    assert pts.x[8] == pytest.approx(ov.profiles.sink_mass[1, 2]) and list(pts.customdata[8]) == [1, 2]
    ring = trace(fig, "selected head")
    assert ring.x[0] == pytest.approx(ov.profiles.sink_mass[1, 2])
    df = overview_charts.profiles_frame(ov.profiles)
    assert list(df.columns) == list(overview_charts.PROFILE_COLUMNS.values())
    assert len(df) == 18 and df.loc[8, "KV head"] == 0 and df.loc[8, "locality"] == pytest.approx(ov.profiles.local_mass[1, 2])


def test_attention_tokens_html_escapes_and_marks():
    from kvviz.charts.style import COLORS, tint
    from kvviz.ui.token_html import attention_tokens_html

    tokens = ["<script>alert(1)</script>", " ok", "\n", " gone", " new"]
    out = attention_tokens_html(tokens, prompt_len=4, weights=np.array([0.5, 0.25, 0.0, 0.25, 0.0]), selected=1,
                                evicted=np.array([0, 0, 0, 1, 0], bool))
    assert "<script>" not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    spans = out.split("<span")[1:]
    assert tint(COLORS["attention"], 0.93) in spans[0]  # the largest weight is the darkest
    assert "sel" in spans[1].split(">")[0] and "st-evicted" not in spans[1]
    assert "↵" in spans[2]
    assert "st-evicted" in spans[3] and "evicted" in spans[3]  # the same evicted chip as the Live page
    assert " gen" in spans[4].split(">")[0] and "generated" in spans[4]
    part = attention_tokens_html(tokens, prompt_len=4, start=1, stop=3)
    assert "1 tokens before" in part and "2 tokens after" in part


def test_csv_of_the_view():
    a = causal_matrix(4)
    tokens = ["<cmd>", " b", " c", " d"]
    csv_text = detail_charts.view_csv(AttentionView.from_matrix(a), tokens)
    lines = csv_text.strip().splitlines()
    assert lines[0] == "query \\ key,0 <cmd>,1  b,2  c,3  d"  # plain text, a position first
    cells = lines[2].split(",")
    assert float(cells[1]) == pytest.approx(a[1, 0], rel=1e-5) and cells[3] == ""  # masked cell empty
    pooled = detail_charts.view_csv(AttentionView.from_matrix(causal_matrix(10), max_cells=5, pool="max"))
    assert pooled.splitlines()[0] == "query \\ key,0–1,2–3,4–5,6–7,8–9"


def test_lost_mass_figure_highlights_the_step():
    fig = detail_charts.lost_mass_figure(np.array([0.0, 0.1, 0.3]), step=1)
    bar = fig.data[0]
    assert list(bar.y) == [0.0, 0.1, 0.3]
    from kvviz.charts.style import COLORS

    assert bar.marker.color[1] == COLORS["highlight"] and bar.marker.color[0] != COLORS["highlight"]
