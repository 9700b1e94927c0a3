"""Chart builders and per-token states of the Live policy page, on a hand-made Trace."""

from __future__ import annotations

import re

import numpy as np
import pytest
from live_synthetic import PROMPT_LEN, make_trace, with_output

from kvviz.record import metrics
from kvviz.charts import against_full as compare_charts
from kvviz.charts import memory as memory_charts
from kvviz.charts import retention as retention_charts
from kvviz.charts.token_map import STATE_COLORS, token_states_figure
from kvviz.record.token_states import STATES, Scope, occupancy, retention, token_records
from kvviz.record.trace import StoreError
from kvviz.ui.token_html import comparison_html, token_css, tokens_html

SINGLE = Scope(0, 0)


def read_records():
    """Step 1 of the synthetic trace with a retriever's read set: position 1 (kept) read there."""
    t = make_trace()
    mask = np.zeros((t.n_steps, t.n_layers, t.n_kv_heads, t.n_positions), dtype=bool)
    mask[1, :, :, 1] = True
    records = token_records(make_trace(read_mask=mask), 1, SINGLE)
    assert [r.state for r in records][:2] == ["sink", "read"]
    return records


def states(trace, step, scope=SINGLE):
    return [r.state for r in token_records(trace, step, scope)]


# ---------------------------------------------------------------------------------- states


def test_token_states_at_step_1():
    t = make_trace()
    assert states(t, 1) == [
        "sink", "kept", "evicted", "evicted_now", "high_score", "recent", "recent", "next", "pending", "pending",
    ]
    all_scope = token_records(t, 1)
    assert all_scope[3].state == "partial" and all_scope[3].kept_share == pytest.approx(0.25)
    assert all_scope[3].evicted_at_step == 1  # the first eviction in the scope
    assert token_records(t, 1, Scope(1, 1))[3].state == "kept"


def test_every_state_gets_its_colour_in_the_token_map():
    t = make_trace()
    records = token_records(t, 1, SINGLE) + token_records(t, 1) + read_records()  # single scope, "partial" from all, "read"
    fig = token_states_figure(records, step=1)
    seen = {}
    for tr in fig.data:
        seen[tr.meta] = tr.marker.color
        assert tr.name.startswith(STATES[tr.meta][0])
    assert set(seen) == set(STATES)
    assert seen == {s: STATE_COLORS[s] for s in STATES}
    assert len(set(STATE_COLORS.values())) == len(STATE_COLORS)  # every state looks different


def test_every_state_gets_its_colour_in_the_html():
    t = make_trace()
    html_text = tokens_html(token_records(t, 1, SINGLE), step=1, show_pending=True) + tokens_html(token_records(t, 1), 1)
    html_text += tokens_html(read_records(), 1)
    rules = dict(re.findall(r"\.st-(\w+) \{ background-color: (#[0-9a-fA-F]+);", token_css()))
    assert rules == STATE_COLORS
    spans = re.findall(r'class="tok st-(\w+)[^"]*" data-pos="(\d+)"', html_text)
    assert {s for s, _ in spans} == set(STATES)
    # partly kept tokens are filled (in the kept colour) as far as the share keeping them, never faded
    kept = STATE_COLORS["kept"]
    assert re.search(rf'class="tok st-partial" data-pos="3" style="background-image: linear-gradient\(to right, {kept} 25%, #[0-9A-F]+ 25%\);"', html_text)
    assert "opacity" not in html_text
    # pending tokens are hidden unless asked for; generated tokens are underlined
    assert "tok st-pending" not in tokens_html(token_records(t, 1, SINGLE), step=1)
    assert 'class="tok st-recent gen" data-pos="6"' in html_text


# ---------------------------------------------------------------------------------- steps


def test_the_step_changes_what_is_shown():
    t = make_trace()
    assert states(t, 0)[3] == "kept"
    assert states(t, 1)[3] == "evicted_now"
    assert states(t, 2)[3] == "evicted"
    assert states(t, 1)[7] == "next" and states(t, 2)[7] == "recent"
    # step clamps to the run
    assert states(t, 99) == states(t, 3)
    html1 = tokens_html(token_records(t, 1, SINGLE), 1)
    html2 = tokens_html(token_records(t, 2, SINGLE), 2)
    assert html1 != html2 and 'data-pos="8"' not in html1 and 'data-pos="8"' in html2


def test_retention_maps_follow_the_step():
    t = make_trace()
    z = retention(t, SINGLE)  # (steps, positions)
    assert z.shape == (4, 10)
    assert z[0, 3] == 1 and z[1, 3] == 0 and np.isnan(z[0, 6]) and z[1, 6] == 1
    fig = retention_charts.retention_steps_figure(t, SINGLE, step=2)
    np.testing.assert_array_equal(np.asarray(fig.data[0].z, dtype=float)[:, :3], z[:, :3])
    hlines = [s for s in fig.layout.shapes if s.y0 == s.y1]
    assert [s.y0 for s in hlines] == [2]
    a = retention_charts.retention_layers_figure(t, 0)
    b = retention_charts.retention_layers_figure(t, 2)
    za, zb = np.asarray(a.data[0].z, dtype=float), np.asarray(b.data[0].z, dtype=float)
    assert za.shape == (2, 10) and za[0, 3] == 1 and zb[0, 3] == 0 and zb[1, 3] == 0.5
    assert "step 0" in a.layout.title.text and "step 2" in b.layout.title.text


def test_occupancy_follows_the_step():
    t = make_trace()
    held0, full0 = occupancy(t, 0)
    held2, full2 = occupancy(t, 2)
    assert (full0, full2) == (6, 8)
    assert held0.tolist() == [5, 5]  # position 2 evicted at step 0
    assert held2.tolist() == [6, 6.5]  # layer 1 head 1 still holds position 3
    fig = retention_charts.occupancy_figure(t, 2)
    assert list(fig.data[0].y) == [6, 6.5] and list(fig.data[1].y) == [8, 8]
    assert "step 2" in fig.layout.title.text


# ---------------------------------------------------------------------------------- compare


def test_divergence_is_marked_at_the_right_token():
    base = make_trace()
    full = with_output(base, [10, 11, 12, 13], [" A", " B", " C", " D"])
    policy = with_output(base, [10, 11, 99, 98], [" A", " B", " X", " Y"])
    assert compare_charts.first_divergence(full, policy) == 2
    fig = compare_charts.output_comparison_figure(full, policy)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z[:, :2].tolist() == [[1, 1], [1, 1]] and z[:, 2:].tolist() == [[0, 0], [0, 0]]
    assert [s.x0 for s in fig.layout.shapes] == [1.5]  # the line sits just before token 2
    assert "token 2" in fig.layout.title.text
    html_text = comparison_html(full.tokens[PROMPT_LEN:], policy.tokens[PROMPT_LEN:], 2, "test")
    marked = re.findall(r'<span class="tok diverge"[^>]*>([^<]*)</span>', html_text)
    assert marked == [" C", " X"]
    same = with_output(base, [10, 11, 12, 13], [" A", " B", " C", " D"])
    assert compare_charts.first_divergence(full, same) is None
    assert "agree" in compare_charts.output_comparison_figure(full, same).layout.title.text


def test_agreement_figure_shows_kl_and_top1_per_step():
    base = make_trace()
    full = with_output(base, [10, 11, 12, 13], [" A", " B", " C", " D"])
    forced = make_trace(
        kl_to_reference=np.array([0.0, 0.01, 1.5, 0.2], dtype=np.float32),
        top1_agreement=np.array([True, True, False, True]),
        teacher_forced=True,
    )
    fig = compare_charts.agreement_figure(forced, full, divergence=2)
    kl = fig.data[0]
    assert list(kl.x) == [0, 1, 2, 3] and np.allclose(kl.y, [0.0, 0.01, 1.5, 0.2])
    agree, differ = fig.data[1], fig.data[2]
    assert list(agree.x) == [0, 1, 3] and list(differ.x) == [2]
    assert {s.x0 for s in fig.layout.shapes} == {2}  # one line through both panels
    assert "75%" in fig.layout.title.text


# ---------------------------------------------------------------------------------- memory


def test_memory_saving_arithmetic():
    t = make_trace()
    m = metrics.memory_saving(t, 2)
    assert (m.step, m.kv_bytes, m.kv_bytes_full, m.bookkeeping_bytes) == (2, 120, 240, 12)
    assert m.saved_bytes == 120 and m.saved_pct == pytest.approx(50.0)
    last = metrics.memory_saving(t)
    assert last.step == 3 and last.saved_bytes == 130
    assert metrics.memory_saving(t, 99).step == 3
    fig = memory_charts.kv_bytes_figure(t, step=1)
    full, held = fig.data[0], fig.data[1]
    assert list(held.y) == [100, 110, 120, 130] and list(full.y) == [200, 220, 240, 260]  # bytes: unit "bytes"
    assert fig.layout.yaxis.title.text == "bytes"
    assert [s.x0 for s in fig.layout.shapes] == [1]
    assert "saves 110 bytes (50.0%)" in fig.layout.title.text
    big = make_trace(kv_bytes=[3 * 2**20] * 4, kv_bytes_full=[4 * 2**20] * 4)
    fig = memory_charts.kv_bytes_figure(big)
    assert fig.layout.yaxis.title.text == "MiB" and list(fig.data[1].y) == [3.0] * 4
    assert "25.0%" in fig.layout.title.text


def test_quantization_panel():
    t = make_trace(store_error=StoreError(key=[0.1, 0.2], value=[0.05, 0.07], full_precision_keys=3, full_precision_values=3))
    fig = memory_charts.quant_error_figure(t)
    assert list(fig.data[0].y) == [0.1, 0.2] and list(fig.data[1].y) == [0.05, 0.07]
    res = memory_charts.residual_window_figure(t)
    z = np.asarray(res.data[0].z, dtype=float)
    assert z.shape == (2, PROMPT_LEN + 3)  # positions in the cache at the last step
    # the newest 3 held entries: positions 8, 7, 6 (5 is older); 2 and 3 are evicted: blank
    assert z[1].tolist()[4:] == [0, 0, 1, 1, 1] and np.isnan(z[1, 2]) and z[1, 0] == 0
    assert "newest 3 values" in res.layout.title.text
    # where heads hold different entries, the window covers other positions: a share per position
    ev = t.evicted_at_step.copy()
    ev[0, 0, 7] = 2  # layer 0 / head 0 dropped position 7 at step 2
    z = np.asarray(memory_charts.residual_window_figure(make_trace(evicted_at_step=ev, store_error=t.store_error)).data[0].z, dtype=float)
    assert z[1, 5] == pytest.approx(0.25) and z[1, 7] == pytest.approx(0.75)  # 3 of the 4 layers × heads
    kivi = make_trace(store_error=StoreError(key=[0.1, 0.2], value=[0.05, 0.07], full_precision_keys=1, full_precision_values=3))
    z = np.asarray(memory_charts.residual_window_figure(kivi).data[0].z, dtype=float)
    assert z[0].tolist()[4:] == [0, 0, 0, 0, 1]
