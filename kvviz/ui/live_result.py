"""The Live page's result: which run it is and which settings produced it, its numbers at the
step in view, the step / scope controls with a player, and readable run details.

The result in view is the session's last run, or the run the URL names (``?run=<id>``) when the
session has none (a restarted server, a reopened tab): it comes back from the run store, or the
page says plainly that it was interrupted. A trace file can be opened too.
"""

from __future__ import annotations

import datetime
import time

import streamlit as st

from kvviz.i18n import N_, _, current_language, translations
from kvviz.live import run as live_run
from kvviz.runs import store as run_store
from kvviz.record.metrics import device_memory_rows, format_bytes, memory_saving
from kvviz.record.text import cut_character_note
from kvviz.policies.duo_attention import shown_run_details
from kvviz.policies.spec import PolicySpec
from kvviz.record.token_states import Scope
from kvviz.ui import stale
from kvviz.ui.a11y import sr_only
from kvviz.ui.live_controls import JOBS, LOADED_RUN, RESULT, SHOWN
from kvviz.ui.sidebar import operator_settings
from kvviz.ui.state import persisted
from kvviz.ui.token_html import md_escape

SCOPES = [N_("all layers and heads"), N_("one layer and KV head")]  # values stay English; shown with _()
# the passes of a run (keys of LiveResult.wall_s), as the page names them
PASSES = {"policy": N_("policy"), "full": N_("full"), live_run.REUSED: N_("full (reused from an earlier run of this prompt)"),
          "forced": N_("forced"), live_run.CHUNKED: N_("forced (read in chunks: nothing is evicted after the prompt)"),
          "whole run": N_("whole run")}
REOPENED = "live.reopened"  # (run id, caption) of a run reopened from the run store


def _pass(name: str) -> str:
    return _(PASSES[name]) if name in PASSES else name


def _clock(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "?"


def _from_store(run_id: str) -> live_run.LiveResult | None:
    """The stored run of the URL, or None; says so when it was interrupted or failed."""
    stored = run_store.load(run_id)
    if stored is None:
        st.info(_("The run in this link is no longer stored (the store keeps the most recent runs). Press **Run** to run it again."))
        return None
    req = live_run.LiveRequest.from_dict(stored.meta["request"])
    what = _("{policy}, {n} new tokens, started at {clock}").format(
        policy=md_escape(req.spec.label()), n=req.max_new_tokens, clock=_clock(req.started_at))
    if stored.interrupted:
        st.warning(
            _("The run of this link ({what}) was interrupted: the server stopped before it finished, and nothing "
              "of it was kept. Press **Run** to run it again.").format(what=what), icon=":material/restart_alt:",
        )
        return None
    if "policy" not in stored.traces and stored.meta.get("notice"):
        notice = md_escape(_(stored.meta["notice"]))  # kvviz's own text, N_-marked where a job sets it
        st.warning(_("The run of this link ({what}): {notice}").format(what=what, notice=notice), icon=":material/stop_circle:")
        return None
    if "policy" not in stored.traces:
        error = md_escape(stored.meta.get("error") or _("no trace was kept"))
        st.error(_("The run of this link ({what}) failed: {error}").format(what=what, error=error))
        return None
    meta = stored.meta
    st.session_state[REOPENED] = (run_id, _("Reopened from the run store: the run ended at {clock}.").format(clock=_clock(meta.get("ended"))))
    return live_run.LiveResult(
        req, stored.traces["policy"], stored.traces.get("full"), stored.traces.get("forced"),
        wall_s=meta.get("wall_s") or {}, stopped_in=meta.get("stopped_in"),
        generated_text=meta.get("generated_text", ""), full_text=meta.get("full_text", ""),
    )


def current_result() -> live_run.LiveResult | None:
    """The result to show: this session's, else the one the URL names, else None."""
    ss = st.session_state
    JOBS.messages()
    result = ss.get(RESULT)
    run_id = st.query_params.get("run")
    if result is None and run_id and ss.get(LOADED_RUN) != run_id:
        ss[LOADED_RUN] = run_id
        result = ss[RESULT] = _from_store(run_id)
    reopened = ss.get(REOPENED)
    if result is not None and reopened and reopened[0] == run_id == ss.get(LOADED_RUN):
        st.caption(reopened[1])  # on every rerun while the reopened run is the one shown
    return result


def open_trace_file() -> None:
    """Open a trace file downloaded earlier (JSON or npz), up to run_store.MAX_TRACE_FILE_BYTES or
    the operator's KVVIZ_MAX_UPLOAD_MB, whichever is smaller."""
    limit = min(run_store.MAX_TRACE_FILE_BYTES, operator_settings().limits.max_upload_bytes)
    with st.expander(_("Open a saved trace"), icon=":material/upload_file:"):
        upload = st.file_uploader(
            _("A trace downloaded from this page (.json or .npz, at most {mib} MiB)").format(mib=limit >> 20),
            type=["json", "npz"], key="live.upload", max_upload_size=limit >> 20,
        )
        if upload is None or st.session_state.get("live.upload_seen") == upload.file_id:
            return
        st.session_state["live.upload_seen"] = upload.file_id
        try:
            if upload.size > limit:  # the browser refuses it first; a client that does not is refused here
                setting = _(" (this server's setting KVVIZ_MAX_UPLOAD_MB)") if limit < run_store.MAX_TRACE_FILE_BYTES else ""
                raise run_store.TraceFileError(_("{name}: the file is {size} MiB; this page opens traces of at most {mib} MiB{setting}.").format(
                    name=upload.name, size=f"{upload.size / (1 << 20):.1f}", mib=limit >> 20, setting=setting))
            trace = run_store.read_trace_file(upload.name, upload.getvalue())
        except run_store.TraceFileError as exc:
            st.error(md_escape(str(exc)))
            return
        spec = PolicySpec.from_dict(trace.spec) if trace.spec else PolicySpec.create("full")
        request = live_run.LiveRequest(spec, trace.n_steps, list(trace.prompt_ids), compare=False, prompt_name=upload.name, model_name=trace.model)
        st.session_state[RESULT] = live_run.LiveResult(request, trace, generated_text=trace.generated_text)
        st.session_state[SHOWN] = st.session_state.get(SHOWN, 0) + 1


def changed_settings(req: live_run.LiveRequest, spec_now: PolicySpec | None, prompt_now: tuple[str, int | None] | None,
                     new_tokens_now: int | None, compare_now: bool | None) -> list[str]:
    """What the controls say now that the run ``req`` did not: one phrase per changed input."""
    changed = []
    if spec_now is not None and spec_now != req.spec:
        changed.append(_("the policy is **{policy}**").format(policy=md_escape(spec_now.label())))
    if prompt_now is not None and (prompt_now[0] != req.prompt_name or prompt_now[1] != req.prompt_len):
        name, length = prompt_now
        shown = md_escape(_(name)) if name else _("custom prompt")  # an example's name is N_-marked
        changed.append(_("the prompt is **{name}** ({n} tokens)").format(name=shown, n=length) if length
                       else _("the prompt is **{name}**").format(name=shown))
    changed += stale.count_change(_("new tokens"), req.max_new_tokens, new_tokens_now)
    changed += stale.switch_change(_("compare with the full cache"), req.compare, compare_now)
    return changed


def header(result: live_run.LiveResult, spec_now: PolicySpec | None, prompt_now: tuple[str, int | None] | None = None) -> None:
    """Which run this is, the settings that produced it, and how it ended; marked when the controls
    have changed since (a run of this page or the store's: an opened trace file has no controls)."""
    req, trace = result.request, result.trace
    st.divider()
    prompt_name = md_escape(_(req.prompt_name)) if req.prompt_name else _("custom prompt")  # an example's name is N_-marked
    st.subheader(_("{policy} on “{prompt}”").format(policy=md_escape(req.spec.label()), prompt=prompt_name))
    budget = (_("{n} entries per layer and KV head").format(n=trace.budget) if trace.budget is not None
              else _("none (keeps everything)"))
    st.caption(
        _("Settings of this run: **{settings}** · budget {budget} · {prompt} prompt tokens · {new} new tokens asked · {compared}").format(
            settings=md_escape(req.spec.to_text()), budget=budget, prompt=trace.prompt_len, new=req.max_new_tokens,
            compared=_("compared with the full cache") if req.compare else _("no comparison"))
    )
    ss = st.session_state
    if req.run_id == ss.get(LOADED_RUN):
        changed = changed_settings(req, spec_now, prompt_now, ss.get("live.new_tokens"), ss.get("live.compare"))
        stale.warn(changed)
    for note in live_run.shown_notes(req):
        st.caption(note)
    if cut := cut_character_note(result.generated_text or trace.generated_text):
        st.caption(cut)
    if result.stopped:
        st.warning(_("Stopped after {n} generated tokens. {where}").format(n=trace.n_steps, where=_(live_run.STOPPED_IN[result.stopped_in])))


def step_controls(trace) -> tuple[int, Scope, bool]:
    """The decode step in view (a slider per result), the scope, and whether Play was pressed."""
    last = max(trace.n_steps - 1, 0)
    s_col, play_col, scope_col, layer_col, head_col = st.columns([4, 1, 2, 2, 1])
    shown = st.session_state.get(SHOWN, 0)
    if last > 0:
        step = s_col.slider(
            _("Decode step"), 0, last, last, key=f"live.step.{shown}",
            help=_("Step 0 is the cache right after prefill; step s after the s-th generated token entered it."),
        )
        play = play_col.button(_("▶ Play"), key="live.play", help=_("Play the steps from the first to the last."), width="stretch")
    else:
        step, play = 0, False
        s_col.caption(_("One decode step: nothing to step through."))
    with scope_col:
        kind = persisted(st.radio, "live.scope", SCOPES[0], label=_("Scope"), options=SCOPES,
                         format_func=translations(current_language()).gettext)  # this run's language, bound
    if kind == SCOPES[0]:
        return step, Scope(), play
    with layer_col:
        layer = persisted(st.slider, "live.layer", 0, label=_("Layer"), min_value=0, max_value=trace.n_layers - 1)
    with head_col:
        head = persisted(st.selectbox, "live.head", 0, label=_("KV head"), options=list(range(trace.n_kv_heads)))
    return step, Scope(layer, head), play


def metrics(result: live_run.LiveResult, step: int) -> None:
    """Generated tokens, the whole run's time, the cache at the step in view, the divergence and
    the agreement with the full cache."""
    trace, cmp, forced = result.trace, result.against_full, result.forced
    m = st.columns(5)
    m[0].metric(_("Generated"), _("{n} tokens").format(n=trace.n_steps), help=_("stopped by: {reason}").format(reason=trace.stopped_by))
    whole = result.wall_s.get("whole run", trace.timings["total_s"])
    device = "CPU" if trace.device == "cpu" else trace.device
    tps = trace.n_steps / trace.timings["total_s"] if trace.timings.get("total_s") else 0
    m[1].metric(
        _("Whole run"), f"{whole:.1f} s", _("policy {tps} tok/s on {device}").format(tps=f"{tps:.1f}", device=device),
        delta_color="off", delta_arrow="off",
        help=_("Wall time of every pass of this run: {passes}. The policy's own pass: prefill {prefill} s, then decoding.").format(
            passes=_(", ").join(f"{_pass(k)} {v:.2f} s" for k, v in result.wall_s.items()), prefill=f"{trace.timings['prefill_s']:.2f}"),
    )
    at = memory_saving(trace, step)
    m[2].metric(
        _("KV cache at step {step}").format(step=at.step), format_bytes(at.kv_bytes),
        _("{change}% vs full cache").format(change=f"{-at.saved_pct:+.0f}"), delta_color="inverse",
        chart_data=[b / 1024 for b in trace.kv_bytes], chart_type="area", help=_("K/V bytes held per step (KiB); the step slider moves it"),
    )
    kib = [b / 1024 for b in trace.kv_bytes]
    if kib:
        sr_only(_("The sparkline under the KV cache: K/V held per step, from {first} KiB at step 0 to {last} KiB at step {step}.").format(
            first=f"{kib[0]:.1f}", last=f"{kib[-1]:.1f}", step=len(kib) - 1), m[2])
    if cmp is not None:
        div = cmp.first_divergence
        m[3].metric(
            _("First divergence"), _("none") if div is None else _("token {index}").format(index=div),
            help=_("The first generated token that differs from the full cache's output, counted from 0 = the first "
                   "generated token (the prompt is not counted)."),
        )
    if forced is not None and forced.top1_agreement is not None and len(forced.top1_agreement):
        m[4].metric(
            _("Top-1 agreement"), f"{forced.top1_agreement.mean():.0%}", _("mean KL {kl} nats").format(kl=f"{forced.kl_to_reference.mean():.3f}"),
            delta_color="off", delta_arrow="off", chart_data=forced.kl_to_reference.tolist(), chart_type="bar",
            help=_("share of steps where the policy's top-1 token matches the full cache's (teacher-forced); chart: KL per step"),
        )
        kl = forced.kl_to_reference
        sr_only(_("The bars under the top-1 agreement: KL to the full cache per step, {n} steps, largest {kl} nats.").format(
            n=len(kl), kl=f"{kl.max():.3f}"), m[4])


def play_steps(show_step, last: int, pause_s: float = 0.4) -> None:
    """Show every step from 0 to ``last`` in turn (``show_step(step, key)`` draws one)."""
    for s in range(0, last + 1):
        show_step(s, f"play{s}")
        time.sleep(pause_s)


def decoding_text(timings: dict) -> str:
    """How the policy's decode steps ran: replayed from a CUDA graph or eager, whether the model's
    norms, MLPs and rotary embedding ran fused (``kvviz.runtime.fused``: built in the background,
    so a first run on a fresh server decodes unfused), and the policy's own steps
    (``kvviz.runtime.fused_steps``: built for each prompt length and budget)."""
    path = _("replayed from a CUDA graph") if timings.get("decode_path") == "graph" else _("eager, step by step")
    fused = {
        "all": _("the model's blocks fused (torch.compile)"),
        "some": _("some of the model's blocks fused (their build ended during the run)"),
        "building": _("the model's blocks not fused yet (being built in the background for the next run)"),
    }.get(str(timings.get("fused", "off")), _("the model's blocks not fused"))
    steps = {
        "all": _("the policy's steps fused"),
        "some": _("some of the policy's steps fused (their build ended during the run)"),
        "building": _("the policy's steps not fused yet (being built in the background for the next run at this length)"),
    }.get(str(timings.get("fused_steps", "off")))
    if str(timings.get("fused_steps", "")).startswith("failed"):
        steps = _("the policy's steps not fused (torch.compile could not build them)")
    return " · ".join(part for part in (path, fused, steps) if part)


def details(result: live_run.LiveResult) -> None:
    """The run's settings and timings as a readable table, and the trace to download."""
    trace, req = result.trace, result.request
    params = "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in (vals or {}).items() if v is not None) for name, vals in (trace.params or {}).items())
    rows = {
        _("Model"): f"{trace.model} · {trace.device} · {trace.dtype}",
        _("Policy"): req.spec.label(),
        _("Settings (as text)"): req.spec.to_text(),
        _("Parameters"): params or _("none"),
        _("Budget"): _("{n} entries per layer and KV head").format(n=trace.budget) if trace.budget is not None else _("none: keeps everything"),
        _("Prompt"): _("{name}: {n} tokens").format(name=_(req.prompt_name) if req.prompt_name else _("custom"), n=trace.prompt_len),
        _("Generated"): _("{n} of {asked} tokens; stopped by {reason}").format(n=trace.n_steps, asked=req.max_new_tokens, reason=trace.stopped_by),
        _("Output"): result.generated_text or trace.generated_text,
        _("Policy's pass"): _("prefill {prefill} s, decoding {decode} s").format(
            prefill=f"{trace.timings['prefill_s']:.2f}", decode=f"{trace.timings['decode_s']:.2f}"),
        _("Decoding"): decoding_text(trace.timings),
        _("Wall time"): _(", ").join(f"{_pass(k)} {v:.2f} s" for k, v in result.wall_s.items()) or _("not measured"),
        **dict(device_memory_rows(trace.device_memory)),  # a model split across GPUs: one row per device
        **shown_run_details(trace.extra.get("policy_details", {})),  # what the policy found (duo_attention's streaming heads)
    }
    st.table({"": list(rows), _("value"): list(rows.values())}, hide_header=True)  # cells are plain text, not markdown
    st.download_button(
        _("Download the trace (JSON)"), data=live_run.trace_json(trace), file_name=f"kvviz-{trace.policy}.json",
        mime="application/json", key="live.download", on_click="ignore",
    )
