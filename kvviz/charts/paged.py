"""Figures of a paged run (``kvviz.paged.result.PagedRun``): the block pool, the block tables,
held tokens against reserved slots, and the memory each allocation scheme wastes.

Colours (``style``): each request has its own colour (``REQUEST_COLORS``); a block takes the
colour of the request that wrote it, outlined in ``shared`` with its reference count when several
tables hold it; free and cached-free blocks, empty reserved slots and eviction holes each have
their own fill.
"""

from __future__ import annotations

import plotly.graph_objects as go

from kvviz.charts.style import COLORS, request_color, style, tint
from kvviz.record.metrics import format_bytes
from kvviz.paged.result import describe
from kvviz.i18n import N_, _

PARTIAL = 0.45  # opacity of a slot some layers or heads no longer read
RESERVED = 0.13  # opacity of a reserved slot not written yet


def request_colors(request_ids: list[str]) -> dict[str, str]:
    return {rid: request_color(i) for i, rid in enumerate(request_ids)}


def blocks_per_row(block_size: int) -> int:
    return 16 if block_size <= 8 else 8 if block_size <= 16 else 4


def _discrete_heatmap(fills: list[list[str | None]], hover: list[list[str]], text=None) -> go.Heatmap:
    """A heatmap whose cells take the given colours (None: transparent)."""
    palette = sorted({c for row in fills for c in row if c is not None}) or [COLORS["free"]]
    index = {c: i for i, c in enumerate(palette)}
    z = [[None if c is None else index[c] for c in row] for row in fills]
    k = len(palette)
    scale = [[0, palette[0]], [1, palette[0]]] if k == 1 else [
        [edge, c] for i, c in enumerate(palette) for edge in (i / k, (i + 1) / k)
    ]
    return go.Heatmap(
        z=z, zmin=0, zmax=max(k - 1, 1), colorscale=scale, showscale=False, xgap=1, ygap=3,
        customdata=hover, hovertemplate="%{customdata}<extra></extra>",
        text=text, texttemplate="%{text}" if text is not None else None, textfont=dict(size=11),
    )


MAX_GRID_ROWS = 40  # rows of blocks a screen shows slot by slot; beyond, one cell per block
MAX_CELLS_PER_ROW = 128  # cells in a row of the block view; beyond, one cell per several blocks


def slot_fill(state: str, owner_color: str | None, filled: bool, live: float) -> str:
    """The fill of one slot: free, cached, reserved but empty, held, partly held, or a hole."""
    if state == "free":
        return COLORS["free"]
    if state == "cached":
        return COLORS["cached_free"] if filled else COLORS["free"]
    if not filled:
        return tint(owner_color, RESERVED)
    if live >= 0.999:
        return owner_color
    return tint(owner_color, PARTIAL) if live > 0 else COLORS["hole"]


STATE_NAMES = {"free": N_("free"), "cached": N_("cached free"), "used": N_("used")}


def _who(pool: dict, b: int) -> str:
    owners = pool["owners"][b]
    state = pool["state"][b]
    if owners:
        return _("{owners} (ref {ref})").format(owners=", ".join(owners), ref=pool["ref_count"][b])
    return _(STATE_NAMES[state]) if state in STATE_NAMES else state


def _outline(state: str, ref: int, color: str | None) -> tuple[str, float, str]:
    """(colour, width, dash) of a block's outline: shared, used (its owner's colour), free or cached."""
    if ref > 1:
        return COLORS["shared"], 3, "solid"
    if state == "used":
        return color, 1.5, "solid"
    return COLORS["block_outline"], 1, "dot" if state == "cached" else "solid"


def _outline_traces(fig: go.Figure, boxes: dict[tuple, list[tuple[float, float, float, float]]]) -> None:
    """One line trace per outline style, each drawing all its rectangles (x0, x1, y0, y1)."""
    for (color, width, dash), rects in boxes.items():
        xs, ys = [], []
        for x0, x1, y0, y1 in rects:
            xs += [x0, x1, x1, x0, x0, None]
            ys += [y0, y0, y1, y1, y0, None]
        fig.add_scatter(x=xs, y=ys, mode="lines", line=dict(color=color, width=width, dash=dash),
                        hoverinfo="skip", showlegend=False, name="outline")


def _shared_marks(fig: go.Figure, xs: list, ys: list, refs: list[int], text: bool) -> None:
    """The reference count of every shared block (``×refs`` on a light square), as one trace."""
    if not xs:
        return
    if text:
        fig.add_scatter(x=xs, y=ys, mode="markers+text", text=[f"×{r}" for r in refs], hoverinfo="skip", showlegend=False,
                        name="shared", textfont=dict(size=11, color=COLORS["shared"]),
                        marker=dict(symbol="square", size=22, color="rgba(255,255,255,0.85)", line=dict(width=0)))
    else:
        fig.add_scatter(x=xs, y=ys, mode="markers", hoverinfo="skip", showlegend=False, name="shared",
                        marker=dict(symbol="square-open", size=9, color=COLORS["shared"], line=dict(width=2)))


def pool_grid(frame: dict, block_size: int, colors: dict[str, str], per_row: int | None = None) -> go.Figure:
    """The pool at one frame: a row of ``block_size`` slots per block, blocks laid out in rows;
    past ``MAX_GRID_ROWS`` rows, one cell per block (or per group of blocks), said in the title.
    A fixed number of traces whatever the pool's size: one heatmap, one outline trace per style,
    one trace of shared marks, the legend."""
    pool, live = frame["pool"], frame["live"]
    n_blocks = len(pool["state"])
    per_row = per_row or blocks_per_row(block_size)
    fig = go.Figure()
    if -(-n_blocks // per_row) <= MAX_GRID_ROWS:
        rows, note = _slot_cells(fig, pool, live, block_size, colors, per_row), ""
        ticks = [_("blocks {first}–{last}").format(first=r * per_row, last=min(n_blocks, (r + 1) * per_row) - 1) for r in range(rows)]
        height = 60 + 30 * rows
    else:
        group, cols, rows = _block_cells(fig, pool, live, block_size, colors)
        span = group * cols
        ticks = [_("blocks {first}–{last}").format(first=r * span, last=min(n_blocks, (r + 1) * span) - 1) for r in range(rows)]
        note = (_(" · one cell per block ({n} blocks: too many to draw slot by slot)").format(n=f"{n_blocks:,}") if group == 1 else
                _(" · one cell per {group} blocks ({n} blocks: too many to draw one by one)").format(group=group, n=f"{n_blocks:,}"))
        height = 60 + 16 * rows
    _pool_legend(fig, pool, live, colors)
    used = sum(s == "used" for s in pool["state"])
    title = _("Pool after step {step}: {used} of {n} blocks in use · {held} tokens held in {reserved} reserved slots").format(
        step=frame["step"], used=used, n=n_blocks, held=f"{frame['held_tokens']:.0f}", reserved=frame["reserved_slots"]) + note
    legend_rows = -(-(len(colors) + 5) // 8)
    style(fig, height=height + 28 * legend_rows, title=title)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.02, x=0), margin=dict(b=10 + 28 * legend_rows))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(autorange="reversed", tickvals=list(range(rows)), ticktext=ticks, showgrid=False, zeroline=False)
    return fig


def _slot_cells(fig, pool, live, block_size, colors, per_row) -> int:
    """Slot by slot: each block a run of ``block_size`` cells, outlined; returns the rows."""
    n_blocks = len(pool["state"])
    rows = -(-n_blocks // per_row)
    width = per_row * (block_size + 1) - 1
    fills = [[None] * width for _ in range(rows)]
    hover = [[""] * width for _ in range(rows)]
    boxes: dict[tuple, list] = {}
    shared = ([], [], [])
    for b in range(n_blocks):
        state, owners, ref = pool["state"][b], pool["owners"][b], pool["ref_count"][b]
        color = colors.get(owners[0], COLORS["full"]) if owners else None
        row, x0 = b // per_row, (b % per_row) * (block_size + 1)
        who = _who(pool, b)
        for slot in range(block_size):
            filled = slot < pool["filled"][b]
            fills[row][x0 + slot] = slot_fill(state, color, filled, live[b][slot])
            held = _(" · read by {share} of layer-heads").format(share=f"{live[b][slot]:.0%}") if state == "used" and filled else ""
            hover[row][x0 + slot] = _("block {b} · slot {slot} · {who}").format(b=b, slot=slot, who=who) + held
        boxes.setdefault(_outline(state, ref, color), []).append((x0 - 0.5, x0 + block_size - 0.5, row - 0.45, row + 0.45))
        if ref > 1:
            for values, v in zip(shared, (x0 + (block_size - 1) / 2, row, ref)):
                values.append(v)
    fig.add_trace(_discrete_heatmap(fills, hover))
    _outline_traces(fig, boxes)
    _shared_marks(fig, *shared, text=True)
    fig.update_xaxes(range=[-1, width])
    return rows


def block_fill(state: str, owner_color: str | None, filled: int, live: list[float]) -> str:
    """The fill of a whole block (the block view): as ``slot_fill`` of its written slots, read
    together (held by every layer-head, by some, or by none), or reserved when none is written."""
    if state != "used" or not filled:
        return slot_fill(state, owner_color, filled > 0, 1.0)
    return slot_fill(state, owner_color, True, sum(live[:filled]) / filled)


def _block_cells(fig, pool, live, block_size, colors) -> tuple[int, int, int]:
    """One cell per block (per ``group`` blocks past what a screen holds); returns (group, columns, rows)."""
    n_blocks = len(pool["state"])
    group = -(-n_blocks // (MAX_GRID_ROWS * MAX_CELLS_PER_ROW))
    cells = -(-n_blocks // group)
    cols = min(MAX_CELLS_PER_ROW, 8 * -(-cells // (8 * MAX_GRID_ROWS)))
    rows = -(-cells // cols)
    fills = [[None] * cols for _ in range(rows)]
    hover = [[""] * cols for _ in range(rows)]
    shared = ([], [], [])
    for c in range(cells):
        blocks = range(c * group, min(n_blocks, (c + 1) * group))
        row, col = divmod(c, cols)
        tally: dict[str, int] = {}
        for b in blocks:
            owners = pool["owners"][b]
            color = colors.get(owners[0], COLORS["full"]) if owners else None
            fill = block_fill(pool["state"][b], color, pool["filled"][b], live[b])
            tally[fill] = tally.get(fill, 0) + 1
        fills[row][col] = max(tally, key=tally.get)  # the most common fill of the group
        hover[row][col] = _block_hover(pool, live, blocks, block_size)
        refs = max(pool["ref_count"][b] for b in blocks)
        if refs > 1:
            for values, v in zip(shared, (col, row, refs)):
                values.append(v)
    fig.add_trace(_discrete_heatmap(fills, hover))
    _shared_marks(fig, *shared, text=False)
    fig.update_xaxes(range=[-1, cols])
    return group, cols, rows


def _block_hover(pool: dict, live: list, blocks: range, block_size: int) -> str:
    if len(blocks) == 1:
        b = blocks[0]
        filled = pool["filled"][b]
        held = (_(" · read by {share} of layer-heads").format(share=f"{sum(live[b][:filled]) / filled:.0%}")
                if pool["state"][b] == "used" and filled else "")
        return _("block {b} · {who} · {filled} of {size} slots written").format(b=b, who=_who(pool, b), filled=filled, size=block_size) + held
    states = [pool["state"][b] for b in blocks]
    owners = sorted({o for b in blocks for o in pool["owners"][b]})
    counts = ", ".join(f"{states.count(s)} {_(STATE_NAMES[s])}" for s in ("used", "cached", "free") if s in states)
    shared = sum(pool["ref_count"][b] > 1 for b in blocks)
    return (_("blocks {first}–{last}").format(first=blocks[0], last=blocks[-1]) + f" · {counts}"
            + (_(" · held by {owners}").format(owners=", ".join(owners)) if owners else "")
            + (_(" · {n} shared").format(n=shared) if shared else ""))


def _legend_square(fig: go.Figure, name: str, color: str, outline: str | None = None) -> None:
    fig.add_scatter(x=[None], y=[None], mode="markers", name=name, showlegend=True,
                    marker=dict(symbol="square", size=12, color=color, line=dict(color=outline or color, width=2)))


def _pool_legend(fig: go.Figure, pool: dict, live: list, colors: dict[str, str]) -> None:
    for name, c in list(colors.items())[:12]:
        _legend_square(fig, name, c)
    pale = tint(next(iter(colors.values()), COLORS["full"]), PARTIAL)
    evicted = any(x < 0.999 for b, s in enumerate(pool["state"]) if s == "used" for x in live[b][: pool["filled"][b]])
    states = [(_("free"), COLORS["free"], COLORS["block_outline"]), (_("cached free"), COLORS["cached_free"], COLORS["block_outline"])]
    if evicted:
        states += [(_("read by some layer-heads"), pale, pale), (_("hole (evicted)"), COLORS["hole"], COLORS["block_outline"])]
    for name, c, outline in states + [(_("shared (×refs)"), COLORS["hole"], COLORS["shared"])]:
        _legend_square(fig, name, c, outline)


MAX_TABLE_ROWS = 40  # requests shown in the block tables (the first ones)
MAX_TABLE_COLS = 64  # cells per table; beyond, one cell per run of logical blocks


def block_tables(frame: dict, colors: dict[str, str]) -> go.Figure:
    """Each request's block table at one frame: logical block -> physical block, coloured by the
    request that wrote the block (a block from another request's colour is a prefix hit or a
    fork); ``—``: a block eviction left empty. Past ``MAX_TABLE_ROWS`` requests the first are
    shown, past ``MAX_TABLE_COLS`` logical blocks a cell covers a run of them (said in the title)."""
    pool, tables = frame["pool"], frame["pool"]["tables"]
    held = [r for r in colors if r in tables]
    rids = held[:MAX_TABLE_ROWS]
    width = max((len(tables[r]) for r in rids), default=0)
    group = max(1, -(-width // MAX_TABLE_COLS))
    cols = -(-width // group)
    fills = [[None] * cols for _ in rids]
    text = [[""] * cols for _ in rids]
    hover = [[""] * cols for _ in rids]
    for i, rid in enumerate(rids):
        table = tables[rid]
        for c in range(-(-len(table) // group)):
            cell = table[c * group : (c + 1) * group]
            fills[i][c], text[i][c], hover[i][c] = _table_cell(pool, colors, rid, c * group, cell)
    fig = go.Figure(_discrete_heatmap(fills, hover, text) if rids else None)
    note = "" if len(rids) == len(held) else _(" · the first {shown} of {n} requests").format(shown=len(rids), n=len(held))
    note += "" if group == 1 else _(" · one cell per {group} logical blocks").format(group=group)
    style(fig, height=90 + 32 * max(len(rids), 1), title=_("Block tables after step {step} (logical → physical)").format(step=frame["step"]) + note)
    fig.update_xaxes(title=_("logical block") if group == 1 else _("logical blocks (×{group})").format(group=group), dtick=1 if cols <= 32 else None,
                     showgrid=False, zeroline=False)
    fig.update_yaxes(autorange="reversed", tickvals=list(range(len(rids))), ticktext=rids, showgrid=False, zeroline=False)
    if not rids:
        fig.add_annotation(text=_("no request holds blocks at this step"), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


def _table_cell(pool: dict, colors: dict[str, str], rid: str, first: int, cell: list) -> tuple[str, str, str]:
    """(fill, text, hover) of a cell holding the logical blocks ``first``... of ``rid``'s table."""
    present = [b for b in cell if b is not None]
    if not present:
        span = _("logical {first}").format(first=first) if len(cell) == 1 else _("logical {first}–{last}").format(first=first, last=first + len(cell) - 1)
        return COLORS["hole"], "—", _("{request} · {span}: dropped (every entry evicted)").format(request=rid, span=span)
    owners = pool["owners"][present[0]]
    fill = tint(colors.get(owners[0], COLORS["full"]), 0.55)
    if len(cell) == 1:
        b = present[0]
        text = f"{b}" + (f" ×{len(owners)}" if len(owners) > 1 else "")
        return fill, text, (_("{request} · logical {first} → block {b}").format(request=rid, first=first, b=b)
                            + (_(" · shared by {owners}").format(owners=", ".join(owners)) if len(owners) > 1 else ""))
    shared = sum(len(pool["owners"][b]) > 1 for b in present)
    dropped = len(cell) - len(present)
    details = [_("{n} blocks").format(n=len(present))] + ([_("{n} shared").format(n=shared)] if shared else []) + (
        [_("{n} dropped").format(n=dropped)] if dropped else [])
    hover = _("{request} · logical {first}–{last} → blocks {b0}…{b1} ({details})").format(
        request=rid, first=first, last=first + len(cell) - 1, b0=present[0], b1=present[-1], details=_(", ").join(details))
    return fill, "", hover


def usage_over_steps(frames: list[dict], step: int | None = None) -> go.Figure:
    """Reserved slots (blocks in use x block size) and the tokens they hold, per step; the gap is
    the empty end of last blocks plus eviction holes. Preemptions marked (one trace)."""
    steps = [f["step"] for f in frames]
    fig = go.Figure()
    fig.add_scatter(x=steps, y=[f["reserved_slots"] for f in frames], name=_("reserved slots (blocks in use)"), mode="lines+markers",
                    line=dict(color=COLORS["paged"], shape="hv"), marker=dict(size=5))  # markers: a click selects a step
    fig.add_scatter(x=steps, y=[f["held_tokens"] for f in frames], name=_("tokens held (mean over layers and heads)"), mode="lines",
                    line=dict(color=COLORS["generated"], shape="hv"), fill="tonexty", fillcolor=tint(COLORS["paged"], 0.12))
    preempted = [f["step"] for f in frames if any(e["kind"] == "preempt" for e in f["events"])]
    if preempted:
        top = max([f["reserved_slots"] for f in frames] + [1])
        fig.add_scatter(x=[x for s in preempted for x in (s, s, None)], y=[y for _ in preempted for y in (0, top, None)],
                        mode="lines", name=_("preemption"), line=dict(color=COLORS["limit"], dash="dot", width=1.5),
                        hovertemplate=_("preemption at step {step}").format(step="%{x}") + "<extra></extra>")
    if step is not None:
        fig.add_vline(x=step, line=dict(color=COLORS["highlight"], width=1))
    style(fig, height=300, title=_("Reserved slots and held tokens per step"))
    fig.update_xaxes(title=_("scheduler step"), tickformat="d")
    fig.update_yaxes(title=_("token slots"), rangemode="tozero")
    return fig


CONTIGUOUS_PATTERNS = ["", "/", "x"]  # reserve_max, exact, static_batch: one colour, told apart by pattern


def scheme_labels(waste: dict) -> list[tuple[str, str, str]]:
    """(key, label, colour) of each allocation scheme, contiguous first."""
    out = [("reserve_max", _("reserve the max context ({n})").format(n=f"{waste['max_context']:,}"), COLORS["contiguous"]),
           ("exact", _("exact: prompt + max new tokens"), COLORS["contiguous"]),
           ("static_batch", _("static batch: padded to the longest"), COLORS["contiguous"])]
    return out + [(bs, _("paged, blocks of {bs}").format(bs=bs), COLORS["paged"]) for bs in waste["paged"]]


def waste_bars(waste: dict) -> go.Figure:
    """Share of reserved KV bytes holding no token, per scheme, beside vLLM's reported ranges."""
    rows = scheme_labels(waste)
    values = [100 * (waste["paged"][k] if k in waste["paged"] else waste[k]) for k, _, _ in rows]
    fig = go.Figure(go.Bar(
        y=[label for _, label, _ in rows], x=values, orientation="h", marker_color=[c for _, _, c in rows],
        marker_pattern_shape=CONTIGUOUS_PATTERNS + [""] * (len(rows) - 3), text=[f"{v:.1f}%" for v in values], textposition="outside",
        hovertemplate=_("{scheme}: {pct}% of reserved KV bytes hold no token").format(scheme="%{y}", pct="%{x:.1f}") + "<extra></extra>",
        showlegend=False,
    ))
    bands = ((60, 80, COLORS["contiguous"], _("vLLM paper:<br>60–80%<br>before paging"), 0.0, "bottom"),
             (0, 4, COLORS["paged"], _("vLLM: under 4%"), 1.0, "bottom"))
    for x0, x1, color, text, y, anchor in bands:  # the 60-80% label low in its band, where paged bars are short
        fig.add_vrect(x0=x0, x1=x1, fillcolor=tint(color, 0.15), line_width=0)
        fig.add_annotation(x=x0 if x0 == 0 else (x0 + x1) / 2, y=y, xref="x", yref="paper", yanchor=anchor, text=text,
                           showarrow=False, font=dict(size=11, color=color), xanchor="left" if x0 == 0 else "center")
    style(fig, height=110 + 40 * len(rows), title=_("KV memory reserved but holding no token"))
    fig.update_layout(margin=dict(t=70))
    fig.update_xaxes(title=_("% of reserved KV bytes"), range=[0, 125])
    fig.update_yaxes(autorange="reversed")
    return fig


def fits_bars(waste: dict) -> go.Figure:
    """How many of the requests, admitted in order, fit the memory budget under each scheme."""
    rows = scheme_labels(waste)
    fits = waste["fits"]
    values = [fits["paged"][k] if k in fits["paged"] else fits[k] for k, _, _ in rows]
    fig = go.Figure(go.Bar(
        y=[label for _, label, _ in rows], x=values, orientation="h", marker_color=[c for _, _, c in rows],
        marker_pattern_shape=CONTIGUOUS_PATTERNS + [""] * (len(rows) - 3), text=values, textposition="outside", showlegend=False,
        hovertemplate=_("{scheme}: {n} requests fit").format(scheme="%{y}", n="%{x}") + "<extra></extra>",
    ))
    fig.add_vline(x=fits["requests"], line=dict(color=COLORS["highlight"], dash="dash"),
                  annotation_text=_("all {n} requests").format(n=fits["requests"]), annotation_position="top")
    style(fig, height=90 + 40 * len(rows), title=_("Requests that fit in {bytes}").format(bytes=format_bytes(waste["budget_bytes"])))
    fig.update_xaxes(title=_("requests"), range=[0, fits["requests"] * 1.2 + 1], dtick=1 if fits["requests"] <= 12 else None)
    fig.update_yaxes(autorange="reversed")
    return fig


GROUPED = {  # runs of these, by one request, read as one sentence (shown with _())
    "allocate": N_("{request} takes blocks {blocks} for its logical blocks {logicals}"),
    "prefix_hit": N_("{request} reuses blocks {blocks} for its logical blocks {logicals} (prefix hits)"),
    "drop": N_("{request} no longer reads any slot of blocks {blocks} (logical {logicals}): released"),
}


def event_lines(frame: dict) -> list[str]:
    """The step's events, one sentence each (a run of allocations or prefix hits by one request
    in one sentence)."""
    lines, run = [], []
    for e in frame["events"] + [None]:
        if run and (e is None or e["kind"] != run[0]["kind"] or e["request"] != run[0]["request"]):
            if len(run) == 1:
                lines.append(describe(run[0]))
            else:
                blocks = ", ".join(str(x["block"]) for x in run)
                logicals = ", ".join(str(x["detail"].get("logical")) for x in run)
                lines.append(_(GROUPED[run[0]["kind"]]).format(request=run[0]["request"], blocks=blocks, logicals=logicals))
            run = []
        if e is None:
            break
        if e["kind"] in GROUPED:
            run.append(e)
        else:
            lines.append(describe(e))
    return lines
