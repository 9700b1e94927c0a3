"""The Live page's token map and retention maps at long sequences: past what a screen shows they pool
positions (a 32k-token prompt made 7.8 MiB and 12.5 MiB of plotly JSON), and say so in their
title; up to MAX_TOKENS / MAX_COLUMNS positions they are the per-token figures they always were.

Checked on hand-made traces and records of 40,000 tokens: the JSON stays under 1.5 MiB; a pooled
column's kept share is the mean of its tokens' kept shares, computed here with numpy; a pooled
marker's state follows the rule of ``pooled_token_states_figure``, recomputed here by counting; a
lone kept token at position 0 and an evicted stretch stay visible; and at 1,000 tokens the data is
the per-token data, rebuilt here from the token states."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import numpy as np
from live_synthetic import make_trace

from kvviz import i18n
from kvviz.charts import retention as retention_charts
from kvviz.charts.style import STATE_FILL, STATE_SYMBOL
from kvviz.charts.token_map import MAX_TOKENS, describe_record, plotly_text, state_label, token_states_figure
from kvviz.record.token_states import STATES, Scope, TokenRecord, retention, retention_by_layer, token_records
from kvviz.record.trace import Protection

CAP = int(1.5 * 2**20)  # bytes of figure JSON, whatever the length
LONG = 40_000
SINGLE = Scope(0, 0)


def long_trace(prompt: int, new: int = 4, ev: np.ndarray | None = None, n_sink: int = 0, layers: int = 2, heads: int = 2):
    """A trace of ``prompt`` prompt tokens and ``new`` generated ones (``new`` steps), nothing
    evicted unless ``ev`` says (layers, heads, positions)."""
    n = prompt + new
    if ev is None:
        ev = np.full((layers, heads, n), -1, dtype=np.int32)
    layers, heads = ev.shape[:2]
    return make_trace(
        prompt_ids=list(range(prompt)), generated_ids=list(range(10, 10 + new)), tokens=[f" t{i}" for i in range(n)],
        n_layers=layers, n_kv_heads=heads, layer_budgets=[None] * layers, evicted_at_step=ev,
        scores=np.full((layers, heads, n), np.nan, dtype=np.float32), kv_bytes=[1] * new, kv_bytes_full=[2] * new,
        bookkeeping_bytes=[0] * new, lost_mass=np.zeros((new, layers), np.float32), topk_ids=np.zeros((new, 2), np.int64),
        topk_probs=np.zeros((new, 2), np.float32), entropy=np.zeros(new, np.float32), chosen_logprob=np.zeros(new, np.float32),
        timings={"prefill_s": 0.0, "decode_s": 0.0, "step_s": [0.0] * new, "total_s": 0.0}, protection=Protection(n_sink=n_sink),
    )


def every_third_trace(prompt: int = LONG):
    """Layer 0 / head 0 keeps the prompt positions divisible by 3 (the others evicted at the
    prefill); head 1 keeps everything; layer 1 keeps everything but 30,000-30,999 (evicted at step 2)."""
    n = prompt + 4
    ev = np.full((2, 2, n), -1, dtype=np.int32)
    p = np.arange(prompt)
    ev[0, 0, :prompt][p % 3 != 0] = 0
    ev[1, :, 30_000:31_000] = 2
    return long_trace(prompt, ev=ev)


def lone_sink_trace():
    """Position 0 kept alone among evicted tokens (1-9,999); 10,000-39,999 kept except an evicted
    stretch 20,000-20,999; no sinks declared (the first token is not protected)."""
    n = LONG + 4
    ev = np.full((2, 2, n), -1, dtype=np.int32)
    ev[:, :, 1:10_000] = 0
    ev[:, :, 20_000:21_000] = 1
    return long_trace(LONG, ev=ev)


def columns(fig) -> list[tuple[int, int]]:
    """A pooled map's columns as (first, last) positions, read back from their labels."""
    out = []
    for label in fig.data[0].x:
        a, _, b = label.replace(",", "").partition("–")
        out.append((int(a), int(b or a)))
    return out


def z_of(fig) -> np.ndarray:
    return np.asarray(fig.data[0].z, dtype=float)


def within(spans: list[tuple[int, int]], lo: int, hi: int) -> list[int]:
    """The columns whose positions all lie in [lo, hi)."""
    return [c for c, (a, b) in enumerate(spans) if lo <= a and b < hi]


def tiles(spans: list[tuple[int, int]], n: int) -> bool:
    """The spans cover 0..n-1 in order, without gap or overlap."""
    return spans[0][0] == 0 and spans[-1][1] == n - 1 and all(b + 1 == a2 for (_, b), (a2, _) in zip(spans, spans[1:]))


# ------------------------------------------------------------------------------------ size and time


def test_figures_stay_under_the_cap_at_40k_tokens_and_build_in_under_a_second():
    t = every_third_trace()
    step = t.n_steps - 1
    marked = list(range(0, LONG, 97))  # a search matching ~400 tokens
    records = token_records(t, step)
    builders = {
        "token map": lambda: token_states_figure(records, step, marked=marked),
        "steps, all": lambda: retention_charts.retention_steps_figure(t, Scope(), step, marked=marked),
        "steps, one head": lambda: retention_charts.retention_steps_figure(t, SINGLE, step),
        "layers": lambda: retention_charts.retention_layers_figure(t, step, None, marked=marked),
        "layers, one head": lambda: retention_charts.retention_layers_figure(t, step, 0),
    }
    for name, build in builders.items():
        start = time.perf_counter()
        fig = build()
        seconds = time.perf_counter() - start
        size = len(fig.to_json())
        assert size < CAP, (name, size)
        assert seconds < 1.0, (name, seconds)
        assert "per marker" in fig.layout.title.text or "per column" in fig.layout.title.text, name  # it says it is pooled


def test_many_steps_on_a_short_prompt_pool_too():
    """2,000 positions × 150 steps: more cells than a figure should carry, although few positions."""
    t = long_trace(1_850, new=150)
    fig = retention_charts.retention_steps_figure(t, SINGLE, 0)
    assert len(fig.to_json()) < CAP and z_of(fig).shape[0] == 150
    assert z_of(fig).size <= retention_charts.MAX_POOLED_CELLS and tiles(columns(fig), t.n_positions)
    short = retention_charts.retention_steps_figure(long_trace(1_850, new=32), SINGLE, 0)  # the common case: per position
    assert len(short.data[0].x) == 1_882 and short.layout.xaxis.type is None


# ------------------------------------------------------------------------------------ pooled values


def test_a_pooled_column_is_the_mean_kept_share_of_its_tokens():
    t = every_third_trace()
    n = t.n_positions
    p = np.arange(n)
    prompt = p < LONG
    entered = np.where(prompt, 0, p - LONG + 1)
    # layer 0 / head 0 by hand: the prompt's multiples of 3 held, the generated tokens from when they enter
    fig = retention_charts.retention_steps_figure(t, SINGLE, 3)
    spans, z = columns(fig), z_of(fig)
    assert tiles(spans, n) and len(spans) <= retention_charts.POOLED_COLUMNS
    width = int(re.search(r"pooled: (\d+) tokens per column", fig.layout.title.text).group(1))
    assert max(b - a + 1 for a, b in spans) == width and (width - 1) * len(spans) < n  # the narrowest width that fits
    for step in range(t.n_steps):
        kept = np.where(entered <= step, np.where(prompt, p % 3 == 0, 1.0), np.nan)
        for c, (a, b) in enumerate(spans):
            seen = kept[a : b + 1][~np.isnan(kept[a : b + 1])]
            expected = seen.mean() if seen.size else np.nan
            np.testing.assert_allclose(z[step, c], expected, rtol=1e-6, equal_nan=True)
    # the layers map: layer 0 is the mean over its two heads (head 1 keeps all), layer 1 lost 30,000-30,999 at step 2
    fig = retention_charts.retention_layers_figure(t, 3)
    spans, z = columns(fig), z_of(fig)
    share = retention_by_layer(t, 3)  # (layers, positions), the per-token shares
    by_hand = np.vstack([(np.where(prompt, p % 3 == 0, 1.0) + 1) / 2, np.where((p >= 30_000) & (p < 31_000), 0.0, 1.0)])
    by_hand[:, entered > 3] = np.nan  # the last token enters at step 4
    np.testing.assert_array_equal(share, by_hand)
    expected = np.array([[np.nanmean(by_hand[layer, a : b + 1]) for a, b in spans] for layer in range(2)])
    np.testing.assert_allclose(z, expected, rtol=1e-6)
    assert "pooled" in fig.layout.title.text and fig.layout.xaxis.type == "category"
    assert "tokens %{x}" in fig.data[0].hovertemplate  # hover: "tokens 1,025–1,056"


def test_the_first_token_and_an_evicted_stretch_stay_visible_in_the_retention_maps():
    t = lone_sink_trace()
    for fig in (retention_charts.retention_steps_figure(t, Scope(), 3), retention_charts.retention_layers_figure(t, 3)):
        spans, z = columns(fig), z_of(fig)
        assert spans[0] == (0, 0) and fig.data[0].x[0] == "0"  # position 0: a column of its own
        assert (z[:, 0] == 1).all()  # kept at every step / layer, full colour
        stretch, held, gone = within(spans, 20_000, 21_000), within(spans, 10_000, 20_000), within(spans, 1, 10_000)
        assert len(stretch) >= 20 and (z[-1, stretch] == 0).all()  # the evicted stretch: grey
        assert (z[-1, held] == 1).all() and (z[-1, gone] == 0).all()
    steps = retention_charts.retention_steps_figure(t, Scope(), 3)
    assert (z_of(steps)[0, within(columns(steps), 20_000, 21_000)] == 1).all()  # before step 1 the stretch was held
    # the sinks a selector declares get a column each too
    ev = np.full((2, 2, LONG + 4), 0, dtype=np.int32)
    ev[:, :, :4] = -1
    spans = columns(retention_charts.retention_layers_figure(long_trace(LONG, ev=ev, n_sink=4), 3))
    assert spans[:5] == [(0, 0), (1, 1), (2, 2), (3, 3), (4, spans[4][1])]


def test_pooled_rings_and_the_prompt_end_sit_on_column_boundaries():
    t = every_third_trace()
    fig = retention_charts.retention_steps_figure(t, SINGLE, 3, marked=[25_000, 25_001])
    spans = columns(fig)
    holding = [c for c, (a, b) in enumerate(spans) if a <= 25_001 and b >= 25_000]  # one column or two side by side
    rings = [s for s in fig.layout.shapes if s.name == "marked"]
    assert [(r.x0, r.x1) for r in rings] == [(holding[0] - 0.5, holding[-1] + 0.5)]
    generated = next(c for c, (a, _) in enumerate(spans) if a == LONG)  # the generated tokens start a column
    assert [s.x0 for s in fig.layout.shapes if s.line.dash == "dot"] == [generated - 0.5]
    many = retention_charts.retention_steps_figure(t, SINGLE, 3, marked=list(range(0, LONG, 97)))  # 413 matches, none in adjacent columns
    assert len([s for s in many.layout.shapes if s.name == "marked"]) <= retention_charts.MAX_RINGS
    assert "columns apart ringed together" in many.layout.title.text


# ------------------------------------------------------------------------------------ token map

GROUPS = [("sink", "recent", "high_score", "kept", "read"), ("partial",), ("evicted_now", "evicted"), ("next", "pending")]


def mixed_records(n: int = LONG, prompt: int = LONG - 100) -> list[TokenRecord]:
    """Made by hand: 3 sinks, then a pattern of 17 (8 evicted, 5 kept, 4 high score: held wins
    9 to 8 though evicted is the commonest state), a stretch of 3,000 evicted, the next token at
    ``prompt`` + 10 and pending tokens after it."""
    pattern = ["evicted"] * 8 + ["kept"] * 5 + ["high_score"] * 4
    out = []
    for p in range(n):
        if p < 3:
            state = "sink"
        elif 5_000 <= p < 8_000:
            state = "evicted"
        elif p == prompt + 10:
            state = "next"
        elif p > prompt + 10:
            state = "pending"
        else:
            state = pattern[p % 17]
        out.append(TokenRecord(position=p, text=f"t{p}", state=state, score=None, evicted_at_step=None,
                               kept_share=0.0 if state in ("evicted", "pending", "next") else 1.0, generated=p >= prompt))
    return out


def markers(fig) -> list[tuple[int, int, str, int, int]]:
    """Every pooled marker: (x, y, state, first position, last position), in map order."""
    out = [(x, y, tr.meta, a, b) for tr in fig.data if tr.meta in STATES and tr.customdata is not None
           for x, y, (a, b) in zip(tr.x, tr.y, tr.customdata)]
    return sorted(out, key=lambda m: (m[1], m[0]))


def test_a_pooled_marker_takes_the_group_most_of_its_tokens_are_in_then_its_commonest_state():
    records = mixed_records()
    fig = token_states_figure(records, step=10)
    assert len(fig.to_json()) < CAP
    ms = markers(fig)
    spans = [(a, b) for *_, a, b in ms]
    assert tiles(spans, len(records)) and len(ms) <= 1700
    assert [(x, y) for x, y, *_ in ms] == [(i % 40, i // 40) for i in range(len(ms))]  # laid out like text, 40 to a row
    width = int(re.search(r"Token map: (\d+) tokens per marker", fig.layout.title.text).group(1))
    assert max(b - a + 1 for a, b in spans) == width
    held_though_mostly_evicted = 0
    for _x, _y, state, a, b in ms:
        counts = Counter(r.state for r in records[a : b + 1])
        group = max(GROUPS, key=lambda g: (sum(counts[s] for s in g), -GROUPS.index(g)))
        expected = max(group, key=lambda s: (counts[s], -list(STATES).index(s)))
        assert state == expected, (a, b, counts)
        assert all(r.generated == records[a].generated for r in records[a : b + 1])  # never prompt and output in one
        held_though_mostly_evicted += state in ("kept", "high_score") and counts.most_common(1)[0][0] == "evicted"
    assert held_though_mostly_evicted > 100  # the pattern's runs: held (9 of 17), though "evicted" is their commonest state
    # own markers: the sinks and the next token alone, with their own hover; the stretch evicted
    assert [(a, b, s) for _, _, s, a, b in ms[:4]] == [(0, 0, "sink"), (1, 1, "sink"), (2, 2, "sink"), (3, ms[3][4], ms[3][2])]
    nxt = len(records) - 100 + 10
    assert (nxt, nxt, "next") in [(a, b, s) for _, _, s, a, b in ms]
    assert all(s == "evicted" for _, _, s, a, b in ms if a >= 5_000 and b < 8_000)
    # the same colours and shapes as single tokens; the legend counts tokens
    for tr in fig.data:
        if tr.meta in STATES:
            assert tr.marker.color == STATE_FILL[tr.meta] and tr.marker.symbol == STATE_SYMBOL[tr.meta]["symbol"]
            assert tr.name == f"{state_label(tr.meta)} ({sum(r.state == tr.meta for r in records)})"
    sink = next(tr for tr in fig.data if tr.meta == "sink")
    assert sink.hovertext[0] == plotly_text(describe_record(records[0], 10))
    run = next(tr for tr in fig.data if tr.meta == "evicted")
    assert run.hovertext[-1].startswith("tokens ") and "evicted: " in run.hovertext[-1]


def test_the_token_map_keeps_a_lone_kept_first_token_and_an_evicted_stretch():
    t = lone_sink_trace()
    fig = token_states_figure(token_records(t, 3), 3)
    ms = markers(fig)
    assert ms[0][:3] == (0, 0, "kept") and ms[0][3:] == (0, 0)  # the lone kept first token: a marker of its own
    assert len([m for m in ms if m[3] >= 20_000 and m[4] < 21_000]) >= 20
    assert all(m[2] == "evicted" for m in ms if m[3] >= 20_000 and m[4] < 21_000)
    assert all(m[2] == "kept" for m in ms if m[3] >= 10_000 and m[4] < 20_000)
    assert all(m[2] == "evicted" for m in ms if m[3] >= 1 and m[4] < 10_000)
    rings = token_states_figure(token_records(t, 3), 3, marked=[25_000])
    ring = next(tr for tr in rings.data if tr.meta == "marked")
    holder = next(m for m in markers(rings) if m[3] <= 25_000 <= m[4])
    assert (list(ring.x), list(ring.y)) == ([holder[0]], [holder[1]]) and ring.name == "match (1)"


def test_the_pooled_title_speaks_chinese():
    with i18n.speaking("zh"):
        fig = token_states_figure(mixed_records(5_000, 4_900), step=10)
        heat = retention_charts.retention_layers_figure(lone_sink_trace(), 3)
    assert "每个标记" in fig.layout.title.text and "每列" in heat.layout.title.text


# ------------------------------------------------------------------------------------ short: unchanged


def test_at_1000_tokens_the_figures_are_the_per_token_figures():
    n_prompt = 996
    ev = np.full((2, 2, n_prompt + 4), -1, dtype=np.int32)
    ev[0, 0, 1:400:2] = 0
    ev[:, :, 600:650] = 1
    t = long_trace(n_prompt, ev=ev, n_sink=1)
    step = 2
    for scope in (Scope(), SINGLE):
        records = token_records(t, step, scope)
        fig = token_states_figure(records, step)
        traces = {tr.meta: tr for tr in fig.data}
        for state in STATES:
            mine = [r for r in records if r.state == state]
            if not mine:
                assert state not in traces
                continue
            tr = traces[state]
            assert list(tr.x) == [r.position % 40 for r in mine] and list(tr.y) == [r.position // 40 for r in mine]
            assert tr.name == f"{state_label(state)} ({len(mine)})" and tr.customdata is None
            assert list(tr.hovertext) == [plotly_text(describe_record(r, step)) for r in mine]
        assert fig.layout.title.text is None and fig.layout.height == min(120 + 18 * 25, 900)
        steps = retention_charts.retention_steps_figure(t, scope, step)
        np.testing.assert_array_equal(z_of(steps), retention(t, scope))  # float64, one column per position
        assert list(steps.data[0].x) == list(range(1_000)) and steps.layout.xaxis.type is None
        assert "pooled" not in steps.layout.title.text
    layers = retention_charts.retention_layers_figure(t, step)
    np.testing.assert_array_equal(z_of(layers), retention_by_layer(t, step))
    assert layers.data[0].customdata[0][5] == plotly_text('#5 “ t5”')  # the token's text in the hover, as before
    # the thresholds: MAX_TOKENS tokens drawn one each, one more pooled
    big = long_trace(MAX_TOKENS - 4)
    assert len(json.loads(token_states_figure(token_records(big, 3), 3).to_json())["data"][0]["x"]) == MAX_TOKENS - 1
    assert "per marker" in token_states_figure(token_records(long_trace(MAX_TOKENS - 3), 3), 3).layout.title.text
    assert retention_charts.retention_layers_figure(big, 3).layout.xaxis.type is None
    assert retention_charts.retention_layers_figure(long_trace(MAX_TOKENS - 3), 3).layout.xaxis.type == "category"
