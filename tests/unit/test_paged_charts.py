"""The paged figures on a hand-made frame: every slot's colour, the shared marks, the tables' text,
the waste bars and vLLM's ranges, without a browser or a model."""

import sys

from kvviz.charts import paged as charts
from kvviz.charts.style import COLORS, tint

COLORS_BY_REQUEST = {"r0": "#0072B2", "r1": "#D55E00"}
# 4 blocks of 2 slots: block 0 shared by r0 and r1 (full); block 1 r0's, one slot written, its
# first slot read by half the layer-heads; block 2 cached free; block 3 free. r1 dropped its block 1.
FRAME = {
    "step": 3,
    "events": [{"step": 3, "kind": "cow", "request": "r1", "block": 1, "detail": {"src": 0, "logical": 0}}],
    "pool": {
        "state": ["used", "used", "cached", "free"],
        "ref_count": [2, 1, 0, 0],
        "filled": [2, 1, 2, 0],
        "owners": [["r0", "r1"], ["r0"], [], []],
        "hash": ["a", None, "b", None],
        "tables": {"r0": [0, 1], "r1": [0, None]},
    },
    "live": [[1.0, 1.0], [0.5, 0.0], [0.0, 0.0], [0.0, 0.0]],
    "held_tokens": 2.5,
    "reserved_slots": 4,
}


def cell_colors(heatmap) -> list[list[str | None]]:
    palette = [c for _, c in heatmap.colorscale[::2]]
    return [[None if z is None else palette[z] for z in row] for row in heatmap.z]


def test_charts_import_no_torch():
    import subprocess

    out = subprocess.run([sys.executable, "-c", "import kvviz.charts.paged, sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pool_grid_colours_every_slot_by_its_state():
    fig = charts.pool_grid(FRAME, block_size=2, colors=COLORS_BY_REQUEST, per_row=4)
    heatmap = [t for t in fig.data if t.type == "heatmap"][0]
    blue = COLORS_BY_REQUEST["r0"]
    assert cell_colors(heatmap) == [[
        blue, blue, None,  # block 0: written by r0 (first owner), held everywhere
        tint(blue, charts.PARTIAL), tint(blue, charts.RESERVED), None,  # block 1: partly held, then reserved but empty
        COLORS["cached_free"], COLORS["cached_free"], None,  # block 2
        COLORS["free"], COLORS["free"],  # block 3
    ]]
    assert [a.text for a in fig.layout.annotations] == ["×2"]  # the shared block, with its reference count
    outlines = [s.line.color for s in fig.layout.shapes]
    assert outlines[0] == COLORS["shared"] and outlines[1] == blue
    assert heatmap.customdata[0][0] == "block 0 · slot 0 · r0, r1 (ref 2) · read by 100% of layer-heads"
    assert fig.layout.title.text.startswith("Pool after step 3: 2 of 4 blocks in use · 2 tokens held in 4 reserved slots")


def test_a_hole_is_white():
    assert charts.slot_fill("used", "#0072B2", filled=True, live=0.0) == COLORS["hole"]


def test_block_tables_show_physical_ids_sharing_and_drops():
    fig = charts.block_tables(FRAME, COLORS_BY_REQUEST)
    assert [list(r) for r in fig.data[0].text] == [["0 ×2", "1"], ["0 ×2", "—"]]
    assert list(fig.layout.yaxis.ticktext) == ["r0", "r1"]


WASTE = {
    "reserve_max": 0.855, "exact": 0.2, "paged": {"8": 0.1, "16": 0.25},
    "max_context": 100, "budget_bytes": 2048, "fits": {"requests": 3, "reserve_max": 0, "exact": 1, "paged": {"8": 3, "16": 2}},
}


def test_waste_bars_against_vllms_ranges():
    fig = charts.waste_bars(WASTE)
    assert list(fig.data[0].x) == [85.5, 20.0, 10.0, 25.0]
    assert list(fig.data[0].y) == ["reserve the max context (100)", "exact: prompt + max new tokens", "paged, blocks of 8", "paged, blocks of 16"]
    assert sorted((s.x0, s.x1) for s in fig.layout.shapes) == [(0, 4), (60, 80)]
    assert list(charts.fits_bars(WASTE).data[0].x) == [0, 1, 3, 2]


def test_usage_marks_preemptions():
    frames = [dict(FRAME, step=k, events=[{"kind": "preempt", "request": "r1", "block": None, "detail": {}}] if k == 2 else []) for k in range(4)]
    fig = charts.usage_over_steps(frames, step=1)
    assert list(fig.data[0].y) == [4] * 4 and list(fig.data[1].y) == [2.5] * 4
    assert [s.x0 for s in fig.layout.shapes] == [2, 1]  # the preemption, then the step in view
    assert charts.event_lines(FRAME) == ["r1 writes to shared block 0: copied to block 1 first (copy-on-write)"]


def test_runs_of_allocations_read_as_one_sentence():
    events = [{"kind": "allocate", "request": "r0", "block": b, "detail": {"logical": b}} for b in range(3)]
    events += [{"kind": "prefix_hit", "request": "r1", "block": 0, "detail": {"logical": 0, "ref_count": 2}},
               {"kind": "allocate", "request": "r1", "block": 7, "detail": {"logical": 1}}]
    assert charts.event_lines({"events": events}) == [
        "r0 takes blocks 0, 1, 2 for its logical blocks 0, 1, 2",
        "r1 reuses block 0 for its logical block 0 (prefix hit, 2 readers)",
        "r1 takes block 7 for its logical block 1",
    ]
