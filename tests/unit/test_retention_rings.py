"""The retention maps' rings around marked tokens (search matches): exact for a few, merged to at
most MAX_RINGS for many, every match inside a ring, and built at once (issue 24: one add_vrect per
match took minutes for a search matching a thousand tokens of a long run)."""

import time

import numpy as np
import plotly.graph_objects as go

from kvviz.charts import retention as retention_charts
from kvviz.charts.retention import MAX_RINGS, ring_runs


def covered(rings, positions) -> np.ndarray:
    """For each position, whether a ring [a, b) holds it (searchsorted over the starts)."""
    starts = np.array([a for a, _ in rings])
    stops = np.array([b for _, b in rings])
    i = np.searchsorted(starts, positions, side="right") - 1
    return (i >= 0) & (positions < stops[np.clip(i, 0, None)])


def test_a_few_matches_are_ringed_exactly():
    rings, gap = ring_runs([7, 1, 2, 3, 2])
    assert rings == [(1, 4), (7, 8)] and gap == 0  # by hand: runs of consecutive positions


def test_many_matches_merge_into_at_most_the_limit_and_every_match_is_ringed():
    positions = np.concatenate([np.arange(0, 30_000, 3), [40_000]])  # 10,001 isolated matches
    rings, gap = ring_runs(positions)
    assert 0 < len(rings) <= MAX_RINGS and gap > 0
    assert covered(rings, positions).all()
    assert rings[0][0] == positions.min() and rings[-1][1] == positions.max() + 1  # the span of the raw matches
    assert all(b <= a2 for (_, b), (a2, _) in zip(rings, rings[1:]))  # sorted, disjoint
    assert (40_000, 40_001) in rings  # a lone far match stays its own ring
    # a ring's holes are gaps under ``gap`` between matches: nothing rings an unmatched stretch of ``gap`` or more
    marked = set(positions.tolist())
    for a, b in rings:
        inside = [p for p in range(a, b) if p in marked]
        assert max(np.diff(inside), default=1) - 1 < gap


def test_a_thousand_matches_build_in_well_under_a_second_with_a_note():
    positions = list(range(0, 8192, 8))  # a common letter in an 8k-token run
    fig = go.Figure(go.Heatmap(z=np.zeros((4, 8192))))
    t0 = time.perf_counter()
    note = retention_charts._mark_positions(fig, positions)
    assert time.perf_counter() - t0 < 1.0
    shapes = [s for s in fig.layout.shapes if s.name == "marked"]
    assert len(shapes) <= MAX_RINGS
    assert min(s.x0 for s in shapes) == -0.5 and max(s.x1 for s in shapes) == 8184.5  # first and last match
    assert "1024 matches" in note
    assert retention_charts._mark_positions(go.Figure(), [3, 4]) == ""  # exact rings: no note
