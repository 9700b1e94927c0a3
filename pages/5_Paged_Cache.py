"""Paged cache: several requests decoded together from one pool of KV blocks, step by step."""

import streamlit as st

from kvviz.charts import paged as charts
from kvviz.record.metrics import format_bytes
from kvviz.paged.waste import explain
from kvviz.ui.a11y import bring_into_view, chart
from kvviz.ui import paged as ui
from kvviz.ui.page import start_page
from kvviz.ui.token_html import md_escape
from kvviz.i18n import _

state = start_page(
    _("Paged cache"),
    "🧱",
    _("vLLM's PagedAttention, small enough to read: the keys and values of every request live in fixed-size "
      "blocks of one pool, found through each request's block table. The model really decodes from the pool "
      "(same output as a contiguous cache); pick a scenario to see prefix sharing, copy-on-write, preemption "
      "and what token eviction does to blocks."),
    _("Load a model in the sidebar to run the paged cache."),
)
ui.scenario_buttons()
ui.custom_form()
scenario = ui.chosen()
if scenario is None:
    st.info(_("Pick a scenario above (each runs the model in a few seconds on a GPU, longer on a CPU), or write your own "
              "prompts. The sidebar's prompt is not used here: each scenario brings its own requests."))
    st.stop()
run = ui.run(state.loaded, scenario)
if run is None:
    st.stop()

bring_into_view("result", id(run))  # after a scenario's run, its result is in view
st.subheader(_(scenario.title))  # our own text, N_-marked (a custom run has a fixed title)
ui.stale_mark(scenario)
st.markdown(_(scenario.shows))
m = st.columns(6)
m[0].metric(_("Requests"), len(run.requests))
m[1].metric(_("Prefix-hit blocks"), run.prefix_hit_blocks, help=_("Blocks a request got from the prefix cache instead of computing them."))
m[2].metric(_("Copy-on-write copies"), run.cow_copies)
m[3].metric(_("Preemptions"), run.preemptions)
m[4].metric(_("Peak blocks used"), f"{run.peak_blocks_used} / {run.num_blocks}")
m[5].metric(_("Pool"), format_bytes(run.pool_bytes), help=_("{blocks} blocks × {slots} slots × {bytes} per token (all layers)").format(
    blocks=run.num_blocks, slots=run.block_size, bytes=format_bytes(run.bytes_per_token)))
policy = md_escape(run.policy)
st.caption(
    (_("Policy **{policy}**, {eviction} eviction").format(policy=policy, eviction=ui.eviction_label(run.eviction)) if run.policy != "full"
     else _("Policy **{policy}**").format(policy=policy))
    + " · " + _("{model} on {device} · {s} s for {n} steps").format(
        model=md_escape(run.model), device=run.device, s=f"{run.elapsed_s:.1f}", n=len(run.frames) - 2)
)

step = ui.step_player(len(run.frames), chart_key="paged.usage")
frame = run.frames[step]
colors = charts.request_colors([r["id"] for r in run.requests])
chart(charts.pool_grid(frame, run.block_size, colors), width="stretch", key="paged.grid")
left, right = st.columns([3, 2])
chart(charts.block_tables(frame, colors), width="stretch", key="paged.tables", where=left)
with right:
    st.markdown("**" + _("What happened in step {step}").format(step=step) + "**")
    lines = charts.event_lines(frame)  # our sentences: request ids and numbers only
    if step == 0 or step == len(run.frames) - 1:
        lines = ["*" + _("before the first step: every block is free") + "*" if step == 0 else
                 "*" + _("after the last step: every request finished; full blocks with a hashed prefix stay cached") + "*"]
    st.markdown("\n".join(f"- {line}" for line in lines) if lines else "*" + _("nothing changed in the pool") + "*")
chart(charts.usage_over_steps(run.frames, step), width="stretch", key="paged.usage", on_select="rerun", selection_mode=("points", "box"))
st.caption(_("Click a step on this chart (or drag a box over steps) to move the step player there."))

st.subheader(_("Outputs"))
st.dataframe(
    [{_("request"): r["id"], _("prompt tokens"): r["prompt_tokens"], _("output"): r["generated_text"],
      _("prefix-hit blocks"): r["prefix_hit_blocks"], _("preempted"): r["preemptions"], _("last block table"): str(r["block_table"])}
     for r in run.requests],
    hide_index=True, width="stretch",
)

st.subheader(_("Memory: contiguous reservations against blocks"))
budget_mib = st.slider(
    _("Memory budget for 'requests that fit' (MiB)"), 0.5, max(64.0, 4 * run.pool_bytes / 2**20), round(run.pool_bytes / 2**20, 1),
    step=0.5, key="paged.budget", help=_("Requests are admitted in order while their KV memory fits; default: the pool's size."),
)
waste = run.waste_for(int(budget_mib * 2**20))
left, right = st.columns(2)
chart(charts.waste_bars(waste), width="stretch", key="paged.waste", where=left)
chart(charts.fits_bars(waste), width="stretch", key="paged.fits", where=right)
mean_tokens = sum(r["prompt_tokens"] + len(r["generated_token_ids"]) for r in run.requests) / len(run.requests)
st.markdown(explain(waste, mean_tokens))
st.caption(_(
    "Simplified: waste is measured with every request at its final length, all held at once; a contiguous "
    "allocator's external fragmentation is not modelled. With an eviction policy, blocks written after the first "
    "eviction stay out of the prefix cache, a preempted request restarts the policy on its tokens, and prefix hits "
    "hide the reused prefix's queries from the policy."
))
ui.keep_playing()
