"""The Compare page's pieces: its settings (from the widgets, from a preset, from a bundle), the
outputs side by side, and one column per policy (memory and kept entries at the step in view,
the token states, why a picked token was evicted)."""

from __future__ import annotations

import html
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from kvviz.model.loading import display_name
from kvviz.record import examples as data
from kvviz.runs.bundle import BundleError, RunBundle, RunSettings
from kvviz.charts.style import COLORS, TEXT, series_color, tint
from kvviz.compare.result import ComparisonResult
from kvviz.record.metrics import format_bytes, memory_saving
from kvviz.policies.spec import PolicySpec
from kvviz.record.token_states import Scope, clamp_step, occupancy, one_line, quoted, token_records
from kvviz.ui import sidebar as sb
from kvviz.ui import stale
from kvviz.ui.job_view import JobView
from kvviz.ui.policy_controls import seed_budget, seed_controls
from kvviz.ui.token_window import windowed
from kvviz.ui.token_html import BOX, TOKEN, esc, legend_html, md_escape, render, scroll_box, tokens_html
from kvviz.record.why_evicted import evicted_positions, most_evicted, why_evicted
from kvviz.i18n import N_, _

# session_state keys (permanent; ``persisted`` widgets use them with a leading underscore)
N_POLICIES = "compare.n"
SAME_BUDGET = "compare.same_budget"
NEW_TOKENS = "compare.new_tokens"
QUESTION_AFTER = "compare.question_after"
SHARED_BUDGET = "compare.all"  # budget_control's key for the shared budget
STEP = "compare.step"
LINK_STEP = "compare.link_step"  # a step asked for by a link or a bundle, applied to the next result
RESULT = "compare.result"
JOBS = JobView("compare")  # session_state keys compare.job, compare.error, compare.notice

DEFAULT_POLICIES = ["h2o", "snapkv", "streaming_llm", "window"]
MAX_NEW_TOKENS = 128


def policy_key(i: int) -> str:
    """The controls' key and URL name of the i-th policy (0-based): cmp1 / p1, ..."""
    return f"cmp{i + 1}"


@dataclass(frozen=True)
class Preset:
    title: str
    help: str
    settings: RunSettings


def _preset(title: str, help: str, example: str, specs: list[str], new_tokens: int, chat: bool) -> Preset:
    policies = [PolicySpec.parse(s) for s in specs]
    return Preset(title, help, RunSettings("", example, "", chat, policies, new_tokens))


def presets() -> list[Preset]:
    return [
        _preset(
            N_("Passkey: H2O vs SnapKV vs StreamingLLM"), N_("The pass key hidden in ~500 tokens of filler, each policy at 25% of "
            "the prompt. SnapKV's observation window (8 tokens) sees the question and keeps the key; H2O and StreamingLLM lose it."),
            data.PASSKEY_EXAMPLE, ["h2o:ratio=0.25", "snapkv:window=8,ratio=0.25", "streaming_llm:ratio=0.25"], 12, True,
        ),
        _preset(
            N_("Evict or quantize: H2O 25% vs 4-bit vs KIVI 2-bit"), N_("About a quarter of the memory three ways on the code "
            "example: keep a quarter of the tokens, or keep them all at 4 or 2 bits."),
            data.CODE_EXAMPLE, ["h2o:ratio=0.25", "quant:bits=4", "kivi:bits=2"], 16, False,
        ),
    ]


# ------------------------------------------------------------------------------ settings


def current_settings(state: sb.SidebarState, specs: list[PolicySpec], new_tokens: int, step: int = 0, question_after: bool = False) -> RunSettings:
    params = {}
    if state.prompt_name == data.PASSKEY_EXAMPLE:
        ss = st.session_state
        params = {"filler": ss.get(sb.PASSKEY_FILLER), "depth_pct": ss.get(sb.PASSKEY_DEPTH), "seed": ss.get(sb.PASSKEY_SEED)}
    # the model's name, never the server's path to it: a bundle and its HTML report leave this host
    return RunSettings(display_name(state.model_spec), state.prompt_name, state.prompt, state.chat, specs, new_tokens, params, step, question_after)


def changed_settings(ran: RunSettings, now: RunSettings) -> list[str]:
    """What the controls say now (``now``, its policies None where a column's settings do not build)
    that the comparison on screen (``ran``) did not, named as the controls name them."""
    changed = []
    if now.model != ran.model:
        changed.append(_("the model is **{model}**").format(model=md_escape(now.model)))
    if (now.prompt_name, now.prompt_text) != (ran.prompt_name, ran.prompt_text):
        changed.append(_("the prompt is **{prompt}**").format(prompt=md_escape(prompt_label(now.prompt_name) or _("custom prompt"))))
    changed += stale.switch_change(_("Use the chat template"), ran.chat, now.chat)
    changed += stale.count_change(_("Policies"), len(ran.policies), len(now.policies))
    for i, spec in enumerate(now.policies):
        if spec is not None and (i >= len(ran.policies) or spec != ran.policies[i]):
            changed.append(_("p{i} is **{policy}**").format(i=i + 1, policy=md_escape(spec.label())))
    changed += stale.count_change(_("New tokens"), ran.max_new_tokens, now.max_new_tokens)
    changed += stale.switch_change(_("Question after the context"), ran.question_after, now.question_after)
    return changed


def prompt_label(name: str) -> str:
    """A prompt's name as shown: an example's (N_-marked) or "Custom" in the page's language; any
    other name (a bundle's) as it is ("" stays "": gettext would give the catalog's header)."""
    return _(name) if name else name


def apply_settings(settings: RunSettings, with_step: bool = False) -> None:
    """Set the page's and the sidebar's controls to ``settings`` before they are drawn (a
    widget callback: a preset's button, the bundle uploader); ``with_step``: the next result
    opens at ``settings.step`` (a bundle's view) instead of its last step."""
    ss = st.session_state
    ss[N_POLICIES] = min(max(len(settings.policies), 2), 4)
    for i, spec in enumerate(settings.policies[:4]):
        seed_controls(policy_key(i), spec)
    budgets = {(s.budget, s.ratio) for s in settings.policies if s.takes_budget}
    ss[SAME_BUDGET] = len(budgets) <= 1
    if len(budgets) == 1:
        seed_budget(SHARED_BUDGET, *budgets.pop())
    ss[NEW_TOKENS] = min(max(settings.max_new_tokens, 1), MAX_NEW_TOKENS)
    ss[QUESTION_AFTER] = settings.question_after
    if with_step:
        ss[LINK_STEP] = settings.step
    name = settings.prompt_name
    if name == data.PASSKEY_EXAMPLE:
        p = settings.prompt_params
        for key, value, lo, hi in ((sb.PASSKEY_FILLER, p.get("filler"), 100, 8000), (sb.PASSKEY_DEPTH, p.get("depth_pct"), 0, 100), (sb.PASSKEY_SEED, p.get("seed"), 0, 10_000)):
            if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
                ss[key] = value
    elif name not in data.EXAMPLES:
        name = sb.CUSTOM
        ss[sb.CUSTOM_PROMPT] = settings.prompt_text
    ss[sb.PROMPT_NAME] = name
    ss[sb.CHAT_PREFIX + name] = settings.chat


def open_bundle(bundle: RunBundle) -> None:
    """The uploader's callback: show the comparison a bundle holds, with its settings."""
    result = ComparisonResult.from_bundle(bundle)  # BundleError when its traces do not fit together
    if len(bundle.settings.policies) > 4:
        raise BundleError(_("A comparison holds at most 4 policies."))
    apply_settings(bundle.settings, with_step=True)
    ss = st.session_state
    ss[RESULT], ss[JOBS.error_key], ss[JOBS.notice_key] = result, None, None
    ss["compare.run_id"] = ss.get("compare.run_id", 0) + 1


# ------------------------------------------------------------------------------ outputs


def outputs_html(result: ComparisonResult) -> str:
    """The full cache's output and each policy's side by side; in each policy's, its first
    divergence from the full cache outlined and what follows tinted."""
    full = result.full

    def column(title: str, color: str, tokens: list[str], div: int | None, note: str) -> str:
        spans = []
        for i, t in enumerate(tokens):
            style = TOKEN
            if div is not None and i == div:
                style += f" outline: 2px solid {COLORS['differ']}; background: {tint(COLORS['differ'], 0.18)}; font-weight: 600;"
                tip = _("first divergence: generated token {i}").format(i=i)  # outside the f-string: Babel reads no f-string
                spans.append(f'<span class="diverge" style="{style}" title="{esc(tip)}">{esc(t)}</span>')
                continue
            if div is not None and i > div:
                style += f" background: {tint(COLORS['differ'], 0.07)};"
            spans.append(f'<span style="{style}">{esc(t)}</span>')
        nothing = _("(nothing generated)")
        return (
            f'<div class="kvviz-output" style="flex: 1; min-width: 220px; border: 1px solid {COLORS["outline"]}; border-top: 4px solid {color};'
            f' border-radius: 8px; padding: 8px 12px;"><div style="font-weight: 600;">{esc(title)}</div>'
            f'<div style="font-size: 13px; color: {TEXT["muted"]}; margin-bottom: 4px;">{html.escape(note)}</div>'
            f'<div style="{BOX}">{"".join(spans) or "<i>" + esc(nothing) + "</i>"}</div></div>'
        )

    parts = [column(_("full cache"), COLORS["full"], full.tokens[full.prompt_len :], None, _("the reference"))]
    for i, (label, run) in enumerate(zip(result.labels, result.runs)):
        div = run.first_divergence(full)
        note = _("same as the full cache") if div is None else _("first divergence at token {i}").format(i=div)
        parts.append(column(label, series_color(i), run.trace.tokens[run.trace.prompt_len :], div, note))
    return '<div style="display: flex; gap: 12px; flex-wrap: wrap;">' + "".join(parts) + "</div>"


def divergence_caption() -> None:
    st.caption(_("First divergence: the first generated token that differs from the full cache's output, "
                 "counted from 0 = the first generated token."))


# ------------------------------------------------------------------------------ one column per policy


def column_header(i: int, label: str) -> None:
    """The i-th policy's name over its column, in its series colour (as in the charts)."""
    st.html(f'<div style="border-left: 6px solid {series_color(i)}; padding-left: 8px; font-weight: 600;">{esc(label)}</div>')


STOPPED_BY = {"eos": N_("eos"), "max_new_tokens": N_("max new tokens"), "user": N_("user")}  # Trace.stopped_by -> shown


def policy_column(result: ComparisonResult, i: int, step: int, key: str) -> None:
    """Memory and kept entries at ``step``, the token states, and why a picked token was evicted."""
    run, label = result.runs[i], result.labels[i]
    trace = run.trace
    s = clamp_step(trace, step)
    column_header(i, label)
    if s != step:
        why = _(STOPPED_BY[trace.stopped_by]) if trace.stopped_by in STOPPED_BY else trace.stopped_by
        st.caption(_("Its run ended at step {s} ({why}): shown at step {s}.").format(s=s, why=why))
    saving = memory_saving(trace, s)
    held, full_entries = occupancy(trace, s)
    a, b = st.columns(2)
    a.metric(_("K/V held"), format_bytes(saving.kv_bytes), _("{pct}% of full").format(pct=f"{saving.held_pct:.0f}"), delta_color="off",
             delta_arrow="off", help=_("{bytes} bytes at step {s}; the full cache: {full} bytes").format(
                 bytes=f"{saving.kv_bytes:,}", s=s, full=f"{saving.kv_bytes_full:,}"))
    b.metric(_("Kept per head"), f"{held.mean():.4g}", _("of {n}").format(n=full_entries), delta_color="off", delta_arrow="off",
             help=_("entries held at step {s} per layer and KV head (mean over layers), of the {n} the full cache holds").format(
                 s=s, n=full_entries))
    a, b = st.columns(2)
    div = run.first_divergence(result.full)
    a.metric(_("First divergence"), _("none") if div is None else _("token {i}").format(i=div),
             help=_("of the free output from the full cache's, counted from 0 = the first generated token"))
    b.metric(_("Top-1 agreement"), f"{run.top1_agreement:.0%}" if run.forced is not None else "–",
             help=_("teacher-forced on the full cache's output; mean KL {kl} nats").format(kl=f"{run.mean_kl:.4f}"))
    records = windowed(token_records(trace, s, Scope()), f"{key}.tokens")  # long sequences: a window
    render(scroll_box(tokens_html(records, s), _("Token states of {policy} at step {s}").format(policy=label, s=s), height=320))
    why_evicted_panel(trace, s, key=f"{key}.why")


def why_evicted_panel(trace, step: int, key: str) -> None:
    positions = evicted_positions(trace, step)
    if not positions:
        st.caption(_("Nothing evicted by step {step}.").format(step=step))
        return
    position = st.selectbox(
        _("Why was this token evicted?"), positions, index=positions.index(most_evicted(trace, step)), key=key,
        format_func=lambda p: f"#{p} {quoted(one_line(trace.tokens[p]))}",
        help=_("Pick a token this policy evicted (by at least one layer and KV head) by the step in view."),
    )
    reason = why_evicted(trace, position, step)
    st.caption(md_escape(reason.summary()))
    if reason.cells and not reason.by_recency:
        with st.expander(_("Score against the cut in each of the {n} layer × KV heads").format(n=len(reason.cells))):
            st.dataframe(pd.DataFrame(reason.rows()), hide_index=True, height=240)


SUMMARY_COLUMNS = {  # the summary table's columns (English, as in its CSV) -> what the page shows
    "policy": N_("policy"), "spec": N_("spec"), "step": N_("step"), "kept entries per layer and KV head": N_("kept entries per layer and KV head"),
    "entries of the full cache": N_("entries of the full cache"), "kv_bytes": N_("KV bytes"), "kv_bytes_full": N_("full cache's KV bytes"),
    "held %": N_("held %"), "generated tokens": N_("generated tokens"), "first divergence": N_("first divergence"),
    "mean KL (nats)": N_("mean KL (nats)"), "top-1 agreement": N_("top-1 agreement"), "output": N_("output"),
}


def summary_view(result: ComparisonResult, step: int) -> pd.DataFrame:
    """The summary table as the page shows it: the full cache's row named in the page's language
    (the table itself, its CSV and the report keep "full cache")."""
    table = result.summary_table(step)
    table.loc[0, "policy"] = _("full cache")
    return table


def summary_columns() -> dict:
    """Column labels of the summary table in the page's language (the data and the CSV keep English names)."""
    return {name: _(label) for name, label in SUMMARY_COLUMNS.items()}


def legend() -> None:
    """What the token colours mean, once for every column."""
    render(legend_html())
