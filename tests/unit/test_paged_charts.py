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
    marks = [t for t in fig.data if t.name == "shared"]
    assert len(marks) == 1 and list(marks[0].text) == ["×2"] and list(marks[0].x) == [0.5]  # the shared block, its refs
    outlines = {t.line.color: list(t.x) for t in fig.data if t.name == "outline"}  # one trace per outline style
    assert outlines[COLORS["shared"]] == [-0.5, 1.5, 1.5, -0.5, -0.5, None]  # block 0
    assert outlines[blue] == [2.5, 4.5, 4.5, 2.5, 2.5, None]  # block 1
    assert not fig.layout.shapes and not fig.layout.annotations
    assert heatmap.customdata[0][0] == "block 0 · slot 0 · r0, r1 (ref 2) · read by 100% of layer-heads"
    assert fig.layout.title.text.startswith("Pool after step 3: 2 of 4 blocks in use · 2 tokens held in 4 reserved slots")


def test_a_hole_is_white():
    assert charts.slot_fill("used", "#0072B2", filled=True, live=0.0) == COLORS["hole"]


def test_block_tables_show_physical_ids_sharing_and_drops():
    fig = charts.block_tables(FRAME, COLORS_BY_REQUEST)
    assert [list(r) for r in fig.data[0].text] == [["0 ×2", "1"], ["0 ×2", "—"]]
    assert list(fig.layout.yaxis.ticktext) == ["r0", "r1"]


WASTE = {
    "reserve_max": 0.855, "exact": 0.2, "static_batch": 0.4, "paged": {"8": 0.1, "16": 0.25},
    "max_context": 100, "budget_bytes": 2048,
    "fits": {"requests": 3, "reserve_max": 0, "exact": 1, "static_batch": 2, "paged": {"8": 3, "16": 2}},
}


def test_waste_bars_against_vllms_ranges():
    fig = charts.waste_bars(WASTE)
    assert list(fig.data[0].x) == [85.5, 20.0, 40.0, 10.0, 25.0]
    assert list(fig.data[0].y) == ["reserve the max context (100)", "exact: prompt + max new tokens",
                                   "static batch: padded to the longest", "paged, blocks of 8", "paged, blocks of 16"]
    assert list(fig.data[0].marker.pattern.shape) == ["", "/", "x", "", ""]  # one grey, told apart by pattern
    assert sorted((s.x0, s.x1) for s in fig.layout.shapes) == [(0, 4), (60, 80)]
    assert list(charts.fits_bars(WASTE).data[0].x) == [0, 1, 2, 3, 2]


def test_usage_marks_preemptions():
    frames = [dict(FRAME, step=k, events=[{"kind": "preempt", "request": "r1", "block": None, "detail": {}}] if k == 2 else []) for k in range(4)]
    fig = charts.usage_over_steps(frames, step=1)
    assert list(fig.data[0].y) == [4] * 4 and list(fig.data[1].y) == [2.5] * 4
    preempt = [t for t in fig.data if t.name == "preemption"]
    assert len(preempt) == 1 and list(preempt[0].x) == [2, 2, None]  # one trace for every preemption
    assert [s.x0 for s in fig.layout.shapes] == [1]  # the step in view
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


def test_the_block_view_colours_and_describes_whole_blocks(monkeypatch):
    monkeypatch.setattr(charts, "MAX_GRID_ROWS", 3)  # a block a row: 4 rows, past the screen's 3
    fig = charts.pool_grid(FRAME, block_size=2, colors=COLORS_BY_REQUEST, per_row=1)
    heatmap = [t for t in fig.data if t.type == "heatmap"][0]
    blue = COLORS_BY_REQUEST["r0"]
    # block 0 held everywhere; block 1: its one written slot read by half; cached; free
    assert cell_colors(heatmap)[0][:4] == [blue, tint(blue, charts.PARTIAL), COLORS["cached_free"], COLORS["free"]]
    assert list(heatmap.customdata[0][:2]) == [
        "block 0 · r0, r1 (ref 2) · 2 of 2 slots written · read by 100% of layer-heads",
        "block 1 · r0 (ref 1) · 1 of 2 slots written · read by 50% of layer-heads",
    ]
    marks = [t for t in fig.data if t.name == "shared"]
    assert list(marks[0].x) == [0] and list(marks[0].y) == [0]
    assert "one cell per block (4 blocks" in fig.layout.title.text


def test_past_the_screen_blocks_are_grouped(monkeypatch):
    monkeypatch.setattr(charts, "MAX_GRID_ROWS", 1)
    monkeypatch.setattr(charts, "MAX_CELLS_PER_ROW", 2)  # 4 blocks in 2 cells of 2
    fig = charts.pool_grid(FRAME, block_size=2, colors=COLORS_BY_REQUEST, per_row=1)
    heatmap = [t for t in fig.data if t.type == "heatmap"][0]
    assert [list(r) for r in heatmap.customdata] == [[
        "blocks 0–1 · 2 used · held by r0, r1 · 1 shared", "blocks 2–3 · 1 cached free, 1 free",
    ]]
    assert "one cell per 2 blocks" in fig.layout.title.text


def big_frame(n_blocks: int, block_size: int) -> dict:
    """A full pool of ``n_blocks``: request r{k} owns block k, every fourth block shared with r0."""
    owners = [[f"r{b % 50}"] + (["r0"] if b % 4 == 0 and b % 50 else []) for b in range(n_blocks)]
    tables = {f"r{k}": [b for b in range(n_blocks) if b % 50 == k or (k == 0 and b % 4 == 0)] for k in range(50)}
    return {
        "step": 9, "events": [],
        "pool": {"state": ["used"] * n_blocks, "ref_count": [len(o) for o in owners], "filled": [block_size] * n_blocks,
                 "owners": owners, "hash": [None] * n_blocks, "tables": tables},
        "live": [[1.0] * block_size for _ in range(n_blocks)], "held_tokens": n_blocks * block_size,
        "reserved_slots": n_blocks * block_size,
    }


def test_4096_one_slot_blocks_in_bounded_time_and_traces():
    import time

    frame = big_frame(4096, 1)
    colors = charts.request_colors([f"r{k}" for k in range(50)])
    t0 = time.perf_counter()
    fig = charts.pool_grid(frame, 1, colors)
    tables = charts.block_tables(frame, colors)
    usage = charts.usage_over_steps([dict(frame, step=k, events=[{"kind": "preempt"}]) for k in range(4096)])
    elapsed = time.perf_counter() - t0
    assert elapsed < 2, f"{elapsed:.1f} s"
    assert not fig.layout.shapes and not fig.layout.annotations
    assert len(fig.data) <= 3 + 12 + 5  # heatmap, outlines, shared marks, then the legend
    heatmap = [t for t in fig.data if t.type == "heatmap"][0]
    assert len(heatmap.z) <= charts.MAX_GRID_ROWS and len(heatmap.z[0]) <= charts.MAX_CELLS_PER_ROW
    cols = len(heatmap.z[0])
    assert heatmap.customdata[1][3] == f"block {cols + 3} · r{(cols + 3) % 50} (ref 1) · 1 of 1 slots written · read by 100% of layer-heads"
    assert "one cell per block (4,096 blocks" in fig.layout.title.text
    assert len(tables.data[0].z) == charts.MAX_TABLE_ROWS and len(tables.data[0].z[0]) <= charts.MAX_TABLE_COLS
    assert "the first 40 of 50 requests" in tables.layout.title.text
    assert len(usage.data) == 3 and len(usage.data[2].x) == 3 * 4096 and not usage.layout.shapes
