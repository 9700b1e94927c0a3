"""The Live page's run controls: one-click demos, how many tokens and whether to compare (kept
across pages and in the URL), Run and Stop, and the view of a run while it goes on.

A run is a ``kvviz.live.job.LiveJob`` that ``JOBS`` (a ``kvviz.ui.job_view.JobView``) follows; its
result goes to ``session_state["live.result"]`` and its id into the URL (``?run=<id>``), so that
the same tab reopens it from the run store after a server restart.
"""

from __future__ import annotations

import streamlit as st

from kvviz.i18n import _
from kvviz.record import examples as data
from kvviz.live import run as live_run
from kvviz.live.job import LiveJob
from kvviz.runtime.inputs import InputError
from kvviz.record.metrics import format_bytes
from kvviz.policies.spec import PolicySpec
from kvviz.ui import sidebar as sb
from kvviz.ui.policy_controls import seed_controls, show_budget_notes
from kvviz.ui.sidebar import SidebarState
from kvviz.ui.job_view import JobView
from kvviz.ui.state import persisted
from kvviz.ui.token_html import md_escape, stream_html

JOBS = JobView("live")  # session_state keys live.job, live.error, live.notice
RESULT, SHOWN = "live.result", "live.shown"  # session_state keys
LOADED_RUN = "live.loaded_run"  # the run id whose stored run this session has (or ran itself)


def _apply_preset(name: str) -> None:
    preset = data.PRESETS[name]
    ss = st.session_state
    ss[sb.PROMPT_NAME] = preset.example
    ss[sb.CHAT_PREFIX + preset.example] = preset.chat
    if preset.example == data.PASSKEY_EXAMPLE:
        ss[sb.PASSKEY_FILLER], ss[sb.PASSKEY_SEED] = data.DEFAULT_PASSKEY_FILLER, 0
        ss[sb.PASSKEY_DEPTH] = int(data.DEFAULT_PASSKEY_DEPTH * 100)
    seed_controls("live", PolicySpec.parse(preset.spec))
    ss["live.new_tokens"], ss["live.compare"] = preset.new_tokens, True
    ss["live.preset_story"] = preset.story


def presets() -> None:
    """One-click demos: each sets the prompt, the policy and the run settings."""
    with st.expander(_("Demos in one click"), icon=":material/science:", expanded=False):
        cols = st.columns(len(data.PRESETS))
        for col, name in zip(cols, data.PRESETS):
            col.button(_(name), on_click=_apply_preset, args=(name,), width="stretch", key=f"live.preset.{name}")
        st.caption(_("Each sets the prompt in the sidebar and the policy above; then press **Run**."))
    story = st.session_state.get("live.preset_story")
    if story:
        st.info(_(story), icon=":material/science:")  # N_-marked in kvviz.record.examples


def run_settings(state: SidebarState, prompt_len: int | None, spec: PolicySpec | None):
    """New tokens and the comparison (kept across pages and in the URL), the notes on what the
    policy protects at this budget, and the Run / Stop buttons. Returns the row's container."""
    row = st.container(border=True)
    c_tokens, c_compare, c_run, c_stop = row.columns([3, 2, 1, 1], vertical_alignment="bottom")
    with c_tokens:
        new_tokens = persisted(
            st.slider, "live.new_tokens", 32, url="new", label=_("New tokens"), min_value=1, max_value=live_run.MAX_NEW_TOKENS,
            help=_("Greedy decoding; stops early at end of sequence."),
        )
    with c_compare:
        compare = persisted(
            st.checkbox, "live.compare", True, url="compare", label=_("Compare with full cache"),
            help=_("Also run the full cache, and the policy teacher-forced on the full cache's output (per-step KL, "
                   "top-1). Three runs instead of one."),
        )
        question_after = persisted(
            st.checkbox, "live.question_after", False, url="qafter", label=_("Question after the context"),
            help=_("Query-agnostic: the policy compresses the context alone, then the question (the prompt's last "
                   "paragraph, after a blank line, as in the passkey example) is appended to the compressed cache."),
        )
    summary = state.loaded.summary
    name = md_escape(_(state.prompt_name)) if state.prompt_name else _("custom")  # an example's name is N_-marked
    length = _("{n} tokens").format(n=prompt_len) if prompt_len else _("empty")
    line = (_("Prompt: **{name}**, {length} with the chat template") if state.chat else _("Prompt: **{name}**, {length}"))
    row.caption(line.format(name=name, length=length) + _(" · model {model} on {device}").format(model=md_escape(summary.name), device=summary.device))
    show_budget_notes(row, spec, prompt_len)
    if prompt_len and prompt_len > live_run.LONG_PROMPT_CPU and summary.device == "cpu":
        row.warning(
            _("A {n}-token prompt on the CPU: the prefill alone can take minutes (policies that score with "
              "attention compute it over the whole prompt); Stop ends it at the next layer.").format(n=prompt_len),
            icon=":material/hourglass_top:",
        )
    if JOBS.run_requested():  # before the buttons: Stop is live while this run follows the job
        _start(state, spec, int(new_tokens), bool(compare), bool(question_after))
    JOBS.buttons(c_run, c_stop)


def _start(state: SidebarState, spec: PolicySpec | None, new_tokens: int, compare: bool, question_after: bool = False) -> None:
    if JOBS.job is not None:
        st.warning(_("A run is still going; stop it first."))
        return
    if spec is None:
        st.error(_("Fix the policy settings above first."))
        return
    loaded = state.loaded
    try:
        request = live_run.prepare(
            loaded.tokenizer, state.prompt, chat=state.chat, spec=spec, max_new_tokens=new_tokens,
            max_context=loaded.summary.max_context, compare=compare, prompt_name=state.prompt_name,
            model_name=loaded.summary.name, passkey=state.passkey, question_after=question_after,
        )
    except InputError as exc:
        st.error(md_escape(str(exc)))
        return
    if JOBS.start(LiveJob(loaded.model, loaded.tokenizer, request)) is not None:
        st.query_params["run"] = request.run_id  # a restart finds the run (or says it was interrupted)


def keep_run_in_url() -> None:
    """The result this session shows came from a run of the store (run here or reopened): its id
    stays in the URL, also after a visit to another page (which empties the URL)."""
    ss = st.session_state
    result = ss.get(RESULT)
    run_id = ss.get(LOADED_RUN)
    if result is not None and run_id and result.request.run_id == run_id and st.query_params.get("run") != run_id:
        st.query_params["run"] = run_id


def follow_job() -> None:
    """While a job runs: its progress and outputs as they stream; then keep its result and rerun."""
    job: LiveJob | None = JOBS.job
    if job is None:
        keep_run_in_url()
        return
    bar_box = st.container()
    left, right = st.columns(2)
    left.markdown(_("**{policy}** output").format(policy=md_escape(job.request.spec.label())))
    right.markdown(_("**full cache** output") if job.request.compare else " ")
    policy_box, full_box, bytes_box = left.empty(), right.empty(), st.empty()

    def draw(job: LiveJob) -> None:
        policy_box.html(stream_html(job.text("policy"), cursor=job.phase == "policy"))
        if job.request.compare:
            full_box.html(stream_html(job.text("full"), cursor=job.phase == "full"))
        if job.kv_bytes:
            held, full = job.kv_bytes
            bytes_box.caption(_("KV cache now: {held} held, {full} for the full cache").format(held=format_bytes(held), full=format_bytes(full)))

    JOBS.follow(bar_box, draw)
    ss = st.session_state
    ss[RESULT] = job.result
    ss[LOADED_RUN] = job.request.run_id  # the URL names this run: the session has it, not the store
    ss[SHOWN] = ss.get(SHOWN, 0) + 1
    st.rerun()
