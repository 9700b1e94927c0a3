"""Compare: two to four cache policies on the same prompt, against the full cache, one step slider for all."""

import streamlit as st

from kvviz.compare import run as comparison
from kvviz.compare.job import CompareJob
from kvviz.live import run as live_run
from kvviz.record.text import cut_character_note
from kvviz.runtime.inputs import InputError
from kvviz.charts import compare as charts
from kvviz.ui.a11y import bring_into_view, chart
from kvviz.ui import compare_view as view
from kvviz.ui import stale
from kvviz.ui.bundles import downloads, upload_box
from kvviz.ui.clicks import selected_steps
from kvviz.ui.page import start_page
from kvviz.ui.policy_controls import budget_control, policy_controls
from kvviz.ui.state import from_url, persisted, to_url, within
from kvviz.ui.token_html import md_escape, render
from kvviz.i18n import N_, _, ngettext

state = start_page(
    _("Compare policies"), "⚖️",
    _("Two to four cache policies on the same prompt, each against the full cache: what each keeps, what it costs, "
      "and where its output parts from the full cache's."),
    _("Load a model in the sidebar to compare policies."),
)
ss = st.session_state
loaded = state.loaded
prompt_len = live_run.prompt_length(loaded.tokenizer, state.prompt, state.chat)
found, link_step = from_url("step", 0, check=within(0, view.MAX_NEW_TOKENS),
                             instead=lambda: _("no step (a run opens at its last)"))  # a step of the result: 0 (the prompt) to the new tokens
if found:  # a link to a view of a result: run it once and show that step
    ss[view.LINK_STEP], ss["compare.autorun"] = link_step, True

# ------------------------------------------------------------------------------ settings
with st.container(horizontal=True):
    for preset in view.presets():
        st.button(_(preset.title), help=_(preset.help), on_click=view.apply_settings, args=(preset.settings,), icon=":material/bolt:")
c_n, c_new, c_budget = st.columns([1, 2, 3], vertical_alignment="top")
n = persisted(c_n.radio, view.N_POLICIES, 3, url="n", label=_("Policies"), options=[2, 3, 4], horizontal=True)
new_tokens = persisted(c_new.slider, view.NEW_TOKENS, 16, url="new", label=_("New tokens"), min_value=1, max_value=view.MAX_NEW_TOKENS,
                       help=_("Greedy decoding; a run stops early at the end of sequence."))
question_after = persisted(c_new.checkbox, view.QUESTION_AFTER, False, url="qafter", label=_("Question after the context"),
                           help=_("Query-agnostic: each policy compresses the context alone, then the question (the prompt's last "
                                  "paragraph, after a blank line, as in the passkey example) is appended to the compressed cache."))
with c_budget:
    same = persisted(st.toggle, view.SAME_BUDGET, True, url="same", label=_("Same budget for every policy"))
    shared = budget_control(view.SHARED_BUDGET, prompt_len, url=True) if same else None
specs = []
for i, column in enumerate(st.columns(n, border=True)):
    with column:
        view.column_header(i, f"p{i + 1}")
        specs.append(policy_controls(view.policy_key(i), prompt_len, view.DEFAULT_POLICIES[i], url=f"p{i + 1}", shared_budget=shared, narrow=True))
for i in range(n, 4):
    to_url(f"p{i + 1}", None, None)  # a column not shown leaves the link

c_run, c_stop, c_info = st.columns([1, 1, 6], vertical_alignment="center")
prompt_size = ngettext("{n} token", "{n} tokens", prompt_len).format(n=prompt_len) if prompt_len else _("empty")
c_info.caption(
    (_("Prompt: **{name}**, {size} with the chat template") if state.chat else _("Prompt: **{name}**, {size}")).format(
        name=md_escape(view.prompt_label(state.prompt_name)), size=prompt_size)
    + " · " + _("{runs} runs: the full cache once, then each policy on its own and teacher-forced on the full cache's output").format(
        runs=1 + 2 * n)
)


jobs = view.JOBS
if jobs.run_requested() or (ss.pop("compare.autorun", False) and ss.get(view.RESULT) is None):
    if None in specs:
        st.error(_("Fix the policy settings above first."))
    elif jobs.job is None:
        settings = view.current_settings(state, specs, new_tokens, question_after=bool(question_after))
        try:
            ids = comparison.prepare(loaded.tokenizer, settings, loaded.summary.max_context)
        except InputError as exc:
            st.error(md_escape(str(exc)))
        else:
            jobs.start(CompareJob(loaded.model, loaded.tokenizer, ids, settings, loaded.summary.name))

jobs.buttons(c_run, c_stop)
with st.expander(_("Open a run bundle"), expanded=f"{view.RESULT}.upload.message" in ss, icon=":material/upload_file:"):
    upload_box(f"{view.RESULT}.upload", view.open_bundle, kind="compare")

if (job := jobs.follow()) is not None:
    ss[view.RESULT] = job.result
    ss["compare.run_id"] = ss.get("compare.run_id", 0) + 1
    st.rerun()

jobs.messages()
result = ss.get(view.RESULT)
if result is None:
    st.info(_("Press **Run** to compare the policies, pick a preset above, or open a run bundle."))
    st.stop()

# ------------------------------------------------------------------------------ the result
st.divider()
bring_into_view("result", ss.get("compare.run_id", 0))  # after Run, the result is in view
st.subheader(_("{n} policies on “{prompt}”").format(n=len(result.runs), prompt=md_escape(view.prompt_label(result.settings.prompt_name))))
st.caption(_("{n} prompt tokens · model {model} on {device} ({dtype})").format(
    n=result.full.prompt_len, model=md_escape(result.full.model), device=result.full.device, dtype=result.full.dtype))
stale.warn(view.changed_settings(result.settings, view.current_settings(state, specs, new_tokens, question_after=bool(question_after))))
if result.stopped:
    st.warning(_("Stopped: {done} of {total} policies finished; they are shown.").format(done=len(result.runs), total=len(result.settings.policies)))
last = result.n_steps - 1
run_id = ss.get("compare.run_id", 0)
picked = next((s for s in (selected_steps("compare.memory"), selected_steps("compare.agreement")) if s is not None), None)
if picked is not None and last > 0:  # a click or a box on a per-step chart moves the token view to it
    ss[f"{view.STEP}.{run_id}"] = min(picked[0], last)
if last > 0:
    start = min(ss.pop(view.LINK_STEP, last), last)
    kept = f"{view.STEP}.{run_id}" in ss  # moved by a chart: the slider takes its kept value (no value given with it)
    step = st.slider(_("Decode step, for every policy"), 0, last, None if kept else start, key=f"{view.STEP}.{run_id}",
                     help=_("Step 0 is the cache right after the prefill; step s, after the s-th generated token entered it."))
else:
    step = 0
to_url("step", step, None)

st.markdown("**" + _("Outputs") + "**")
render(view.outputs_html(result))
view.divergence_caption()
for who, trace in [(_("The full cache's output"), result.full),
                   *((_("{policy}'s output").format(policy=label), run.trace) for label, run in zip(result.labels, result.runs))]:
    if cut := cut_character_note(trace.generated_text, who):
        st.caption(md_escape(cut))
st.markdown("**" + _("Token states at step {step}").format(step=step) + "**")
view.legend()
for i, column in enumerate(st.columns(len(result.runs))):
    with column:
        view.policy_column(result, i, step, key=f"compare.col{i}.{run_id}")

left, right = st.columns(2)
select = dict(on_select="rerun", selection_mode=("points", "box"))  # a step or a range moves the token view
chart(charts.memory_figure(result, step), width="stretch", key="compare.memory", where=left, **select)
chart(charts.agreement_figure(result, step), width="stretch", key="compare.agreement", where=right, **select)
st.caption(_("Click a step on either chart, or drag a box over a range, to show the token states at that step (a range: its first step)."))
st.dataframe(view.summary_view(result, step), hide_index=True, column_config=view.summary_columns())

st.markdown("**" + _("Export") + "**")
downloads(
    "compare", "kvviz-compare", lambda: result.bundle_json(step), result.bundle_bytes(), lambda: charts.report(result, step).to_html(),
    {N_("Summary"): lambda: result.summary_table(step), N_("Per step"): result.steps_table},  # shown translated, file names English
)
