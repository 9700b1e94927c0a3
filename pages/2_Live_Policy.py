"""Live policy: run a cache policy on the real model and watch what it keeps and evicts."""

import time

import streamlit as st

from kvviz import live_run
from kvviz.charts import compare as compare_charts
from kvviz.charts import memory as memory_charts
from kvviz.charts import retention as retention_charts
from kvviz.charts.token_map import token_states_figure
from kvviz.metrics import format_bytes, memory_saving
from kvviz.token_view import Scope, token_records
from kvviz.ui import token_html
from kvviz.ui.policy_controls import policy_controls
from kvviz.ui.page import start_page

state = start_page(
    "Live policy",
    "🧠",
    "Pick a cache policy, run it on the real model, and watch which tokens it keeps and evicts at "
    "every decode step, next to what the full cache would have produced.",
    "Load a model in the sidebar to run a policy.",
)
ss = st.session_state
loaded = state.loaded
prompt_len = live_run.prompt_length(loaded.tokenizer, state.prompt, state.chat)

# ------------------------------------------------------------------------------ controls
spec = policy_controls(key="live", prompt_len=prompt_len, url="policy")
run_row = st.container(border=True)
c_tokens, c_compare, c_run, c_stop = run_row.columns([3, 2, 1, 1], vertical_alignment="bottom")
max_new_tokens = c_tokens.slider("New tokens", 1, 256, 32, key="live.max_new_tokens", help="Greedy decoding; stops early at end of sequence.")
compare = c_compare.checkbox(
    "Compare with full cache", value=True, key="live.compare",
    help="Also run the full cache, and the policy teacher-forced on the full cache's output (per-step KL, top-1). Three runs instead of one.",
)
run_row.caption(
    f"Prompt: **{token_html.md_escape(state.prompt_name or 'custom')}**, "
    + (f"{prompt_len} tokens" if prompt_len else "empty")
    + (" with the chat template" if state.chat else "")
    + f" · model {token_html.md_escape(loaded.summary.name)} on {loaded.summary.device}"
)
if prompt_len and prompt_len > live_run.LONG_PROMPT_CPU and loaded.summary.device == "cpu":
    run_row.warning(
        f"A {prompt_len}-token prompt on the CPU: the prefill alone can take minutes (policies that score with "
        "attention compute it over the whole prompt), and Stop acts between generated tokens, not during the prefill.",
        icon=":material/hourglass_top:",
    )


def _request_run():
    ss["live.run_requested"] = True


def _stop():
    job = ss.get("live.job")
    if job is not None:
        job.stop()


if ss.pop("live.run_requested", False):
    job = ss.get("live.job")
    if job is not None and job.running:
        st.warning("A run is still going; stop it first.")
    elif spec is None:
        st.error("Fix the policy settings above first.")
    else:
        try:
            request = live_run.prepare(
                loaded.tokenizer, state.prompt, chat=state.chat, spec=spec, max_new_tokens=max_new_tokens,
                max_context=loaded.summary.max_context, compare=compare, prompt_name=state.prompt_name,
                model_name=loaded.summary.name,
            )
        except live_run.LiveInputError as exc:
            st.error(str(exc))
        else:
            ss["live.job"] = live_run.LiveJob(loaded.model, loaded.tokenizer, request).start()
            ss["live.run_id"] = ss.get("live.run_id", 0) + 1

job = ss.get("live.job")
running = job is not None and job.running
c_run.button("▶ Run", type="primary", on_click=_request_run, disabled=running, key="live.run", width="stretch")
c_stop.button("■ Stop", on_click=_stop, disabled=not running, key="live.stop", width="stretch")

# ------------------------------------------------------------------------------ the live run
if job is not None:
    progress = st.progress(0.0)
    left, right = st.columns(2)
    left.markdown(f"**{token_html.md_escape(job.request.spec.label())}** output")
    right.markdown("**full cache** output" if job.request.compare else " ")
    policy_box, full_box, bytes_box = left.empty(), right.empty(), st.empty()
    while True:
        done = not job.running
        frac, text = job.progress()
        progress.progress(frac, text=text)
        policy_box.html(token_html.stream_html(job.policy_tokens, cursor=job.phase == "policy"))
        if job.request.compare:
            full_box.html(token_html.stream_html(job.full_tokens, cursor=job.phase == "full"))
        if job.kv_bytes:
            held, full = job.kv_bytes
            bytes_box.caption(f"KV cache now: {format_bytes(held)} held, {format_bytes(full)} for the full cache")
        if done:
            break
        time.sleep(0.2)
    ss["live.result"], ss["live.error"] = job.result, job.error
    del ss["live.job"]
    st.rerun()

if ss.get("live.error"):
    st.error(ss["live.error"])
result: live_run.LiveResult | None = ss.get("live.result")
if result is None:
    st.info("Press **Run** to generate with the policy. Tokens appear here as they are generated.")
    st.stop()

# ------------------------------------------------------------------------------ the result
trace, full, forced = result.trace, result.full, result.forced
cmp = result.comparison
last = max(trace.n_steps - 1, 0)
saving = memory_saving(trace)
st.divider()
st.subheader(f"{trace.policy} on “{token_html.md_escape(result.request.prompt_name or 'custom prompt')}”")
if result.stopped:
    st.warning(f"Stopped after {trace.n_steps} tokens: what follows shows the partial run" + ("" if cmp else "; no comparison."))
m = st.columns(5)
tps = trace.n_steps / trace.timings["total_s"] if trace.timings.get("total_s") else 0
m[0].metric("Generated", f"{trace.n_steps} tokens", help=f"stopped by: {trace.stopped_by}")
m[1].metric("Run time", f"{trace.timings['total_s']:.1f} s", f"{tps:.1f} tok/s", delta_color="off", delta_arrow="off",
            help=f"the policy's run: prefill {trace.timings['prefill_s']:.2f} s, then decoding")
m[2].metric("KV cache at the end", format_bytes(saving.kv_bytes), f"{-saving.saved_pct:+.0f}% vs full cache", delta_color="inverse",
            chart_data=[b / 1024 for b in trace.kv_bytes], chart_type="area", help="K/V bytes held per step (KiB)")
if cmp is not None:
    div = cmp.first_divergence
    m[3].metric("First divergence", "none" if div is None else f"token {div}", help="first generated token that differs from the full cache's output")
if forced is not None and forced.top1_agreement is not None and len(forced.top1_agreement):
    m[4].metric("Top-1 agreement", f"{forced.top1_agreement.mean():.0%}", f"mean KL {forced.kl_to_reference.mean():.3f} nats",
                delta_color="off", delta_arrow="off", chart_data=forced.kl_to_reference.tolist(), chart_type="bar",
                help="share of steps where the policy's top-1 token matches the full cache's (teacher-forced); chart: KL per step")

# step and scope
s_col, play_col, scope_col, layer_col, head_col = st.columns([4, 1, 2, 2, 1])
run_id = ss.get("live.run_id", 0)
if last > 0:
    step = s_col.slider("Decode step", 0, last, last, key=f"live.step.{run_id}", help="Step 0 is the cache right after prefill; step s after the s-th generated token entered it.")
    play = play_col.button("▶ Play", key="live.play", help="Play the steps from the first to the last.", width="stretch")
else:
    step, play = 0, False
    s_col.caption("One decode step: nothing to step through.")
scope_kind = scope_col.radio("Scope", ["all layers and heads", "one layer and KV head"], key="live.scope")
if scope_kind == "all layers and heads":
    scope = Scope()
else:
    layer = layer_col.slider("Layer", 0, trace.n_layers - 1, 0, key="live.layer")
    head = head_col.selectbox("KV head", list(range(trace.n_kv_heads)), key="live.head")
    scope = Scope(layer, head)

tab_names = ["Tokens", "Retention", "Output vs full cache", "Memory"]
if trace.quant_error:  # a lossy store: quantization, low rank, head sharing
    tab_names.append("Reconstruction error")
tab_names.append("Run details")
tabs = dict(zip(tab_names, st.tabs(tab_names)))

with tabs["Tokens"]:
    token_box = st.empty()
    occupancy_box = st.empty()

    def show_step(s: int, key: str) -> None:
        records = token_records(trace, s, scope)
        with token_box.container():
            st.caption(f"Step {s} · {scope.label()} · hover a token for its position, score, eviction step and share of layers/heads keeping it")
            token_html.render_tokens(records, s)
        occupancy_box.plotly_chart(retention_charts.occupancy_figure(trace, s), width="stretch", key=f"live.occ.{key}")

    if play:
        for s in range(0, last + 1):
            show_step(s, f"play{s}")
            time.sleep(0.4)
    else:
        show_step(step, "step")
    with st.expander("Token map (an overview for long prompts)"):
        st.plotly_chart(token_states_figure(token_records(trace, step, scope), step), width="stretch", key="live.map")

with tabs["Retention"]:
    st.plotly_chart(retention_charts.retention_steps_figure(trace, scope, step), width="stretch", key="live.ret_steps")
    st.plotly_chart(retention_charts.retention_layers_figure(trace, step, scope.head), width="stretch", key="live.ret_layers")

with tabs["Output vs full cache"]:
    if cmp is None:
        st.info("No comparison for this run: tick **Compare with full cache** and run again" + (" without stopping." if result.stopped else "."))
    else:
        token_html.render(
            token_html.comparison_html(
                full.tokens[full.prompt_len :], trace.tokens[trace.prompt_len :], cmp.first_divergence, trace.policy
            )
        )
        st.plotly_chart(compare_charts.output_comparison_figure(full, trace), width="stretch", key="live.cmp_out")
        if forced is not None:
            st.plotly_chart(compare_charts.agreement_figure(forced, full, cmp.first_divergence), width="stretch", key="live.cmp_kl")
            st.caption(
                "The policy is teacher-forced on the full cache's output, so each step compares the two next-token "
                "distributions on the same text: KL(full ‖ policy) in nats, and whether both pick the same top-1 token."
            )

with tabs["Memory"]:
    at = memory_saving(trace, step)
    c = st.columns(4)
    c[0].metric(f"K/V held at step {at.step}", format_bytes(at.kv_bytes))
    c[1].metric("Full cache", format_bytes(at.kv_bytes_full))
    c[2].metric("Saved", format_bytes(at.saved_bytes), f"{at.saved_pct:.1f}%", delta_color="off")
    c[3].metric("Bookkeeping", format_bytes(at.bookkeeping_bytes), help="positions and policy statistics kvviz keeps beside the cache; not counted in K/V held")
    st.plotly_chart(memory_charts.kv_bytes_figure(trace, step), width="stretch", key="live.mem")

if "Reconstruction error" in tabs:
    with tabs["Reconstruction error"]:
        st.plotly_chart(memory_charts.quant_error_figure(trace), width="stretch", key="live.qerr")
        if "residual" in trace.quant_error:
            st.plotly_chart(memory_charts.residual_window_figure(trace), width="stretch", key="live.qres")

with tabs["Run details"]:
    st.markdown(f"**Model** {token_html.md_escape(trace.model)} · {trace.device} · {trace.dtype}")
    st.json({"policy": trace.policy, "params": trace.params, "budget": trace.budget, "stopped_by": trace.stopped_by,
             "prompt tokens": trace.prompt_len, "wall seconds": {k: round(v, 2) for k, v in result.wall_s.items()},
             "prefill_s": round(trace.timings["prefill_s"], 3), "decode_s": round(trace.timings["decode_s"], 3)})
    st.download_button(
        "Download the trace (JSON)", data=live_run.trace_json(trace), file_name=f"kvviz-{trace.policy}.json",
        mime="application/json", key="live.download",
    )
