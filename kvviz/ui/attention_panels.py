"""Parts of the Attention page: its view controls, the layer/head/token selection that clicks on
the charts move, the zoom window, the policy's evictions for the head in view, and the head
profiles section. The page wires them; the numbers come from ``kvviz.attention.maps`` (through
``kvviz.ui.attention_memo``) and the Trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import streamlit as st

from kvviz.attention.data import POOLS, Overview
from kvviz.charts import attention_detail as detail_charts
from kvviz.charts import attention_overview as overview_charts
from kvviz.charts._attention_common import pool_name, scale_name
from kvviz.i18n import N_, _
from kvviz.record.trace import Trace
from kvviz.ui.a11y import chart
from kvviz.ui.clicks import clicked
from kvviz.ui.state import from_url, persisted, to_url, within
from kvviz.ui.token_html import esc

RESOLUTIONS = [48, 64, 96, 128, 192]


def named(names: dict[str, str]) -> Callable[[str], str]:
    """A widget's ``format_func``: each option's name as this run shows it (in the session's
    language; an AppTest formats the options again outside the script run, where ``_`` is English)."""
    return lambda option: names.get(option, option)


@dataclass
class ViewSettings:
    new_tokens: int
    pool: str
    scale: str
    max_cells: int


def view_controls(room: int) -> ViewSettings:
    """New tokens, pooling, colour scale and detail resolution (kept across pages)."""
    c_new, c_pool, c_scale, c_res = st.columns(4)
    with c_new:
        new_tokens = persisted(
            st.number_input, "attn.new_tokens", min(8, room), url="new", label=_("New tokens"), min_value=0, max_value=room,
            help=_("Generate this many tokens greedily first; their attention is shown after the prompt's."),
        )
    with c_pool:
        pool = persisted(
            st.radio, "attn.pool", POOLS[0], url="pool", label=_("Pooling"), options=list(POOLS), horizontal=True, format_func=named({p: pool_name(p) for p in POOLS}),
            help=_("Long sequences are shown in tiles of several tokens: the largest weight in each tile (max), or the mean."),
        )
    with c_scale:
        scale = persisted(
            st.radio, "attn.scale", "log", url="scale", label=_("Scale"), options=["log", "linear"], horizontal=True, format_func=named({s: scale_name(s) for s in ("log", "linear")}),
            help=_("Attention weights span orders of magnitude: a log scale (colours and bars) shows the faint ones too."),
        )
    with c_res:
        max_cells = persisted(
            st.select_slider, "attn.cells", 128, url="cells", label=_("Detail resolution"), options=RESOLUTIONS,
            help=_("Tiles per side in the detail heatmap. A token window this small or smaller is shown token by token."),
        )
    return ViewSettings(int(min(new_tokens, room)), pool, scale, int(max_cells))


def selection(ov: Overview, digest: str, n: int) -> None:
    """Keep the layer, head, token and window in session_state: defaults for a new sequence,
    and the point just clicked in the overview, profile or detail chart."""
    ss = st.session_state
    ss.setdefault("attn.layer", min(ov.n_layers - 1, ov.n_layers // 2))
    ss.setdefault("attn.head", 0)
    if ss.get("attn.sequence") != digest:  # a new sequence: select its last token, show all of it
        ss["attn.sequence"], ss["attn.token"], ss["attn.window"] = digest, n - 1, (0, n)
    # a shared link reopens the same layer, head, token and window (once per session, like every page's settings)
    for url, key, default, hi in (("layer", "attn.layer", 0, ov.n_layers - 1), ("head", "attn.head", 0, ov.n_q_heads - 1), ("token", "attn.token", 0, n - 1)):
        found, value = from_url(url, default, check=within(0, hi), instead=lambda k=key: ss[k])
        if found:
            ss[key] = value
    found, value = from_url("window", (0, n), check=lambda w: within(0, n)(w[0]) or within(w[0] + 1, n)(w[1]),
                            instead=lambda: ss["attn.window"])
    if found:
        ss["attn.window"] = tuple(value)
    for chart_key in ("attn.overview_chart", "attn.profile_chart"):
        picked = clicked(chart_key)
        if isinstance(picked, list) and len(picked) == 2:
            ss["attn.layer"], ss["attn.head"] = int(picked[0]), int(picked[1])
    picked = clicked("attn.detail_chart")
    if picked is not None and not isinstance(picked, list):
        ss["attn.token"] = min(n - 1, int(picked))


def detail_controls(ov: Overview, tokens: list[str], prompt_len: int, max_cells: int) -> tuple[int, int, int, tuple[int, int]]:
    """Layer, query head, selected token and the token window of the detail view."""
    ss, n, group = st.session_state, len(tokens), ov.n_q_heads // ov.n_kv_heads
    c_layer, c_head, c_token, c_text = st.columns([1, 1, 1, 2])
    layer = c_layer.number_input(_("Layer"), 0, ov.n_layers - 1, key="attn.layer")
    head = c_head.number_input(_("Query head"), 0, ov.n_q_heads - 1, key="attn.head",
                               help=_("Heads {group}·k … {group}·k+{last} share KV head k.").format(group=group, last=group - 1))
    token = c_token.number_input(_("Selected token"), 0, n - 1, key="attn.token",
                                 help=_("Its row and column are outlined; click a bar under or beside the heatmap to pick one."))
    where = _("generated") if token >= prompt_len else _("prompt")
    line = _("token <b>{position}</b>: <code>{text}</code> · {where}").format(position=token, text=esc(repr(tokens[token])), where=where)
    c_text.html(f"<div style='padding-top: 1.9rem'>{line}</div>")

    def zoom(start: int, stop: int) -> None:
        ss["attn.window"] = (max(0, start), min(n, stop))

    z1, z2, z3, z4 = st.columns([4, 1, 1, 1])
    window = z1.slider(_("Token window (queries and keys)"), 0, n, key="attn.window",
                       help=_("Zoom: a window of at most the detail resolution is shown token by token."))
    z2.button(_("Whole sequence"), on_click=zoom, args=(0, n), width="stretch")
    z3.button(_("Around the token"), on_click=zoom, args=(int(token) + 1 - max_cells, int(token) + 1), width="stretch")
    z4.button(_("Last tokens"), on_click=zoom, args=(n - max_cells, n), width="stretch")
    window = (int(window[0]), max(int(window[1]), int(window[0]) + 1))
    for url, value, default in (("layer", int(layer), min(ov.n_layers - 1, ov.n_layers // 2)), ("head", int(head), 0), ("token", int(token), n - 1), ("window", window, (0, n))):
        to_url(url, value, default)
    return int(layer), int(head), int(token), window



def evictions(trace: Trace, layer: int, kv_head: int) -> tuple[np.ndarray, int]:
    """The keys the policy had evicted at the step chosen on a slider, for this layer and KV
    head: (evicted (positions,) bool, step)."""
    last = max(0, trace.n_steps - 1)
    if st.session_state.get("attn.step", 0) > last:  # a shorter run than the last one
        st.session_state["attn.step"] = last
    step = persisted(
        st.slider, "attn.step", last, url="step", label=_("Cache at step"), min_value=0, max_value=last,
        help=_("Step 0 is the cache right after the prompt; step s after the s-th generated token entered it."),
    ) if trace.n_steps > 1 else 0
    exists = trace.entered_at_step() <= step
    return exists & ~trace.kept_mask(step, layer, kv_head), step


def eviction_metrics(trace: Trace, evicted: np.ndarray, step: int, layer: int, kv_head: int) -> None:
    """How many keys are gone, and the attention the run's queries put on the entries evicted
    at each step (``Trace.lost_mass``, measured by the engine during the run)."""
    lost = np.asarray(trace.lost_mass, dtype=np.float64)[:, layer] if trace.lost_mass is not None else np.array([])
    e1, e2, e3 = st.columns([1, 1, 3])
    e1.metric(
        _("Evicted keys at step {step}").format(step=step),
        _("{evicted} of {entries}").format(evicted=f"{int(evicted.sum()):,}", entries=f"{int((trace.entered_at_step() <= step).sum()):,}"),
        help=_("Layer {layer}, KV head {kv_head}.").format(layer=layer, kv_head=kv_head),
    )
    measured = lost.size and np.isfinite(lost).all()
    e2.metric(
        _("Attention lost at step {step}").format(step=step), f"{lost[step]:.1%}" if measured else _("not measured"),
        help=_("Layer {layer}, mean over its KV heads: the attention the query of step {step} put on the entries "
               "the policy evicted at that step, just before they left the cache.").format(layer=layer, step=step),
    )
    recall = trace.recall[step, layer] if trace.recall is not None else np.nan
    if np.isfinite(recall):  # a retriever's read set, measured (the prefill reads everything)
        e2.metric(
            _("Top-k recall at step {step}").format(step=step), f"{recall:.0%}",
            help=_("Layer {layer}, mean over its KV heads: the share of the k entries the query of step {step} "
                   "weighs most under full attention (k = the entries read) that the read set held.").format(layer=layer, step=step),
        )
    if measured:
        chart(detail_charts.lost_mass_figure(lost, step), width="stretch", key="attn.lost_chart", where=e3)


PROFILES_TEXT = N_("""Each head, measured over the queries after position {from_query}:
**sink mass** is the attention on the first {sink} tokens, **locality** the attention on the last
{local} tokens, **entropy** how spread out each row is.

**Attention sinks.** Softmax makes every query spend all of its attention somewhere. Many heads, when
nothing in the context is relevant, park that attention on the very first tokens, whatever they say:
the *attention sink* (Xiao et al., 2023). Heads high on the x axis do this. A cache that drops those
first tokens changes where the mass goes and breaks the model, which is why StreamingLLM keeps a few
sink tokens beside its recent window, and why heavy-hitter policies (H2O) keep them naturally.""")
COLOR_BY = {"layer": N_("layer"), "entropy": N_("entropy")}  # the profile chart's colourings -> the name shown


def head_profiles(ov: Overview, layer: int, head: int) -> None:
    """The head profiles: the explanation, the scatter (click a head) and the table."""
    p = ov.profiles
    st.subheader(_("Head profiles"))
    st.markdown(_(PROFILES_TEXT).format(from_query=p.from_query, sink=p.sink_tokens, local=p.local_tokens))
    p1, p2 = st.columns([3, 2])
    with p1:
        color_by = persisted(st.radio, "attn.profile_color", "layer", url="color", label=_("Colour points by"), options=list(COLOR_BY),
                             horizontal=True, format_func=named({by: _(name) for by, name in COLOR_BY.items()}))
        chart(
            overview_charts.profile_figure(p, selected=(layer, head), color_by=color_by),
            key="attn.profile_chart", on_select="rerun", selection_mode="points", width="stretch",
        )
    with p2:
        number = st.column_config.NumberColumn
        st.dataframe(
            overview_charts.profiles_frame(p), hide_index=True, height=470,
            column_config={overview_charts.profile_column(c): number(format="%.3f") for c in ("sink_mass", "local_mass", "entropy", "norm_entropy")}
            | {overview_charts.profile_column("mean_distance"): number(format="%.1f")},
        )
