"""Live policy: run a cache policy on the real model and watch what it keeps and evicts."""

import streamlit as st

from kvviz.i18n import N_, _
from kvviz.live import run as live_run
from kvviz.charts import against_full as compare_charts
from kvviz.charts import memory as memory_charts
from kvviz.charts import retention as retention_charts
from kvviz.charts.token_map import token_states_figure
from kvviz.record.metrics import format_bytes, memory_saving
from kvviz.record.text import match_positions
from kvviz.record.token_states import token_records
from kvviz.ui.a11y import bring_into_view, chart
from kvviz.ui import live_controls, live_result, token_html, token_window
from kvviz.ui.page import start_page
from kvviz.ui.policy_controls import policy_controls
from kvviz.ui.state import persisted

state = start_page(
    _("Live policy"),
    "🧠",
    _("Pick a cache policy, run it on the real model, and watch which tokens it keeps and evicts at "
      "every decode step, next to what the full cache would have produced."),
    _("Load a model in the sidebar to run a policy."),
)
prompt_len = live_run.prompt_length(state.loaded.tokenizer, state.prompt, state.chat)

# ------------------------------------------------------------------------------ controls and the live run
live_controls.presets()
spec = policy_controls(key="live", prompt_len=prompt_len, url="policy")
live_controls.run_settings(state, prompt_len, spec)
live_controls.follow_job()
live_result.open_trace_file()
result = live_result.current_result()
if result is None:
    st.info(_("Press **Run** to generate with the policy. Tokens appear here as they are generated."))
    st.stop()

# ------------------------------------------------------------------------------ the result
trace, full, forced, cmp = result.trace, result.full, result.forced, result.against_full
bring_into_view("result", result.request.run_id)  # after Run, the result is in view
live_result.header(result, spec, (state.prompt_name, prompt_len))
if state.loaded.summary.sliding_windows and result.trace.model == state.loaded.summary.name:
    st.caption(_("Sliding-window layers: {note}. The token view shows the policy's cache.").format(note=state.loaded.summary.sliding_note()))
step, scope, play = live_result.step_controls(trace)
live_result.metrics(result, step)
search = persisted(st.text_input, "live.search", "", label=_("Find in the tokens"), placeholder=_("a word, a number, the pass key ..."),
                   help=_("Tokens that spell it are ringed in yellow in the token view, the token map and the retention maps."))
marked = sorted(set(match_positions(trace.tokens, search)) | set(match_positions(trace.tokens, result.request.passkey or "")))
if result.request.passkey:
    st.caption(_("The hidden pass key **{key}** is ringed wherever it appears ({n} tokens).").format(key=result.request.passkey, n=len(marked)))

tab_names = [N_("Tokens"), N_("Retention"), N_("Output vs full cache"), N_("Memory")]  # English keys, shown with _()
if trace.store_error:  # a lossy store: quantization, low rank, head sharing
    tab_names.append(N_("Reconstruction error"))
tab_names.append(N_("Run details"))
tabs = dict(zip(tab_names, st.tabs([_(name) for name in tab_names])))

with tabs["Tokens"]:
    page = token_window.page_control(min(trace.n_positions, trace.prompt_len + step + 1), "live.tokens.page")  # long sequences: a window (the next token drawn too)
    token_box, occupancy_box = st.empty(), st.empty()

    def show_step(s: int, key: str) -> None:
        with token_box.container():
            st.caption(_("Step {step} · {scope} · hover a token for its position, score, eviction step and share of layers/heads keeping it").format(
                step=s, scope=scope.label()))
            records, shown = token_window.window(token_records(trace, s, scope), page)
            if shown:
                st.caption(shown)
            token_html.render_tokens(records, s, marked=marked)
        chart(retention_charts.occupancy_figure(trace, s), width="stretch", key=f"live.occ.{key}", where=occupancy_box.container())

    if play:
        live_result.play_steps(show_step, max(trace.n_steps - 1, 0))
    else:
        show_step(step, "step")
    with st.expander(_("Token map (an overview for long prompts)")):
        chart(token_states_figure(token_records(trace, step, scope), step, marked=marked), width="stretch", key="live.map")

with tabs["Retention"]:
    chart(retention_charts.retention_steps_figure(trace, scope, step, marked=marked), width="stretch", key="live.ret_steps")
    chart(retention_charts.retention_layers_figure(trace, step, scope.head, marked=marked), width="stretch", key="live.ret_layers")

with tabs["Output vs full cache"]:
    if cmp is None:
        st.info(_("No comparison for this run: tick **Compare with full cache** and run again without stopping.") if result.stopped
                else _("No comparison for this run: tick **Compare with full cache** and run again."))
    else:
        token_html.render(token_html.comparison_html(full.tokens[full.prompt_len :], trace.tokens[trace.prompt_len :], cmp.first_divergence, trace.policy))
        chart(compare_charts.output_comparison_figure(full, trace), width="stretch", key="live.cmp_out")
        if forced is not None:
            chart(compare_charts.agreement_figure(forced, full, cmp.first_divergence), width="stretch", key="live.cmp_kl")
            st.caption(_(
                "The policy is teacher-forced on the full cache's output, so each step compares the two next-token "
                "distributions on the same text: KL(full ‖ policy) in nats, and whether both pick the same top-1 token."
            ))

with tabs["Memory"]:
    at = memory_saving(trace, step)
    c = st.columns(4)
    c[0].metric(_("K/V held at step {step}").format(step=at.step), format_bytes(at.kv_bytes))
    c[1].metric(_("Full cache"), format_bytes(at.kv_bytes_full))
    c[2].metric(_("Saved"), format_bytes(at.saved_bytes), f"{at.saved_pct:.1f}%", delta_color="off")
    c[3].metric(_("Bookkeeping"), format_bytes(at.bookkeeping_bytes),
                help=_("positions and policy statistics kvviz keeps beside the cache; not counted in K/V held"))
    chart(memory_charts.kv_bytes_figure(trace, step), width="stretch", key="live.mem")

if "Reconstruction error" in tabs:
    with tabs["Reconstruction error"]:
        chart(memory_charts.quant_error_figure(trace), width="stretch", key="live.qerr")
        if trace.store_error.full_precision_values is not None:  # a quantizing store
            chart(memory_charts.residual_window_figure(trace), width="stretch", key="live.qres")

with tabs["Run details"]:
    live_result.details(result)
