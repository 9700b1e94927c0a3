"""The Tradeoffs page's widgets and its sweep job: presets, the sweep's settings (kept across
pages and in the URL), a time estimate measured on this machine, Run and Stop with a progress
bar, and finished sweeps kept for every session of this process (keyed by model and settings)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import streamlit as st

from kvviz.sweep import run as sweep
from kvviz.sweep import job as sweep_job
from kvviz.record.examples import LONG_EXAMPLE, long_document
from kvviz.sweep.presets import PRESETS
from kvviz.runtime.inputs import check_limits
from kvviz.ui import run_links, stale
from kvviz.ui.clicks import new_selection
from kvviz.ui.job_view import JobView
from kvviz.ui.sidebar import operator_settings
from kvviz.ui.policy_controls import policy_controls
from kvviz.ui.state import persisted
from kvviz.ui.token_html import md_escape
from kvviz.i18n import N_, _, ngettext

K = "tradeoffs."  # session_state keys
JOBS = JobView("tradeoffs")  # tradeoffs.job, tradeoffs.error, ...
STOPPED = K + "stopped_result"
SHOWN = K + "shown"  # (model key, result): this session's last result, kept on screen (marked stale) when the controls change
TASKS = {"ppl": N_("Perplexity, KL, top-1"), "passkey": N_("Passkey retrieval")}  # values: shown with _()
MODES = {"ratios": N_("Ratios (kept fraction of the prompt)"), "budgets": N_("Budgets (entries per KV head)")}
QUESTION = {"with": N_("with the question"), "after": N_("before the question"), "both": N_("both")}  # sweep.QUESTION_MODES
TEXTS = [LONG_EXAMPLE, "the sidebar's prompt"]  # widget values (in links): shown through text_label
TEXT_LABELS = {TEXTS[0]: LONG_EXAMPLE, TEXTS[1]: N_("the sidebar's prompt")}  # both N_-marked
# on a GPU the reference itself moves (docs/PERFORMANCE.md: the full cache is not bit-reproducible)
KL_HELP = N_("mean KL(full ‖ policy), nats. On a GPU in bf16 the full cache's own run differs in its last bits from one run to the "
             "next, so two sweeps of the same text can differ here by a few percent (the policies' perplexities do not).")
GRID_LABELS = {"ratios": N_("Ratios, comma separated"), "budgets": N_("Budgets, comma separated")}


def text_label(name: str) -> str:
    return _(TEXT_LABELS[name]) if name in TEXT_LABELS else name
MAX_RESULTS = 16


# ------------------------------------------------------------------------------ settings


def _numbers(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def _apply_preset(key: str, device: str) -> None:
    s = PRESETS[key].settings(device)
    ss = st.session_state
    ss[K + "policies"], ss[K + "task"] = "\n".join(s.policies), s.task
    ss[K + "mode"] = "budgets" if s.budgets else "ratios"
    ss[K + ss[K + "mode"]] = _numbers(s.budgets or s.ratios)
    ss[K + "text"], ss[K + "context"], ss[K + "continuation"] = TEXTS[0], s.context, s.continuation
    ss[K + "depths"], ss[K + "lengths"] = _numbers(s.depths), _numbers(s.lengths)


def preset_buttons(device: str) -> None:
    st.markdown(
        _("**Presets**: a story in one click, sized to finish in a minute or two on an idle 2-core CPU (the estimate below is "
          "measured on this machine, now).") if device == "cpu" else
        _("**Presets**: a story in one click, sized larger on {device} than on a CPU.").format(device=device)
    )
    with st.container(horizontal=True):  # buttons as wide as their titles, wrapping to a new row: no title cut
        for preset in PRESETS.values():
            st.button(_(preset.title), key=K + "preset." + preset.key, on_click=_apply_preset, args=(preset.key, device))


def preset_story(settings: sweep.SweepSettings, device: str) -> None:
    """The story of the preset these settings are, if they are one."""
    for preset in PRESETS.values():
        if preset.settings(device) == _without_text(settings):
            st.info(_(preset.story), icon=":material/lightbulb:")


def _without_text(settings: sweep.SweepSettings) -> sweep.SweepSettings:
    import dataclasses

    return dataclasses.replace(settings, text="")


def _add_policy(spec) -> None:
    lines = [ln for ln in st.session_state.get(K + "policies", "").splitlines() if ln.strip()]
    lines.append(sweep.series_name(spec))
    st.session_state[K + "policies"] = "\n".join(lines)


def controls(device: str, sidebar_prompt: str) -> sweep.SweepSettings | None:
    """The sweep's widgets; the settings they describe, or None with the problem shown."""
    d = PRESETS["sinks"].settings(device)
    left, right = st.columns([3, 2])
    with left:
        policies = persisted(
            st.text_area, K + "policies", "\n".join(d.policies), url="policies", label=_("Policies, one per line"), height=140,
            help=_("name[:key=value,...], e.g. snapkv:window=8,kernel=7 or h2o+kivi:kivi.bits=2. full and stores alone "
                   "take no budget and run once. A line that sets its own ratio or budget runs at that point only."),
        )
        with st.expander(_("Add a policy with the controls")):
            spec = policy_controls(key=K + "add", shared_budget=(None, None))
            st.button(_("Add to the list"), key=K + "add_button", on_click=_add_policy, args=(spec,), disabled=spec is None)
    with right:
        task = persisted(st.radio, K + "task", "ppl", url="task", label=_("Task"), options=list(TASKS), format_func=lambda k: _(TASKS[k]), horizontal=True)
        mode = persisted(st.radio, K + "mode", "ratios", url="mode", label=_("Sweep over"), options=list(MODES), format_func=lambda k: _(MODES[k]), horizontal=True)
        grid = persisted(st.text_input, K + mode, _numbers(d.ratios) if mode == "ratios" else "32,64", url=mode, label=_(GRID_LABELS[mode]))
        a, b = st.columns(2)
        if task == "ppl":
            text_name = persisted(st.selectbox, K + "text", TEXTS[0], url="text", label=_("Text (read without a chat template)"), options=TEXTS,
                                  format_func=text_label)
            context = persisted(a.number_input, K + "context", d.context, url="context", label=_("Context (prompt tokens)"), min_value=2, max_value=8192, step=32)
            continuation = persisted(b.number_input, K + "continuation", d.continuation, url="continuation", label=_("Continuation (forced tokens)"), min_value=1, max_value=4096, step=16)
        else:
            depths = persisted(a.text_input, K + "depths", _numbers(d.depths), url="depths", label=_("Needle depths (0 = start, 1 = end)"))
            lengths = persisted(b.text_input, K + "lengths", _numbers(d.lengths), url="lengths", label=_("Filler lengths (tokens)"))
            question = persisted(
                st.radio, K + "question", "with", url="question", label=_("The policy compresses"), options=list(QUESTION),
                format_func=lambda k: _(QUESTION[k]), horizontal=True,
                help=_("Query-agnostic: with the question after, the context is compressed alone and the question is "
                       "appended to the compressed cache; 'both' draws each policy twice (its second series: '· question after')."),
            )
    try:
        numbers = sweep.parse_numbers(grid, float if mode == "ratios" else int, mode.capitalize())
        common = dict(policies=tuple(ln.strip() for ln in policies.splitlines() if ln.strip()), task=task,
                      **{"ratios" if mode == "ratios" else "budgets": numbers})
        if task == "ppl":
            text = long_document() if text_name == TEXTS[0] else sidebar_prompt
            return sweep.SweepSettings(**common, text=text, context=int(context), continuation=int(continuation))
        return sweep.SweepSettings(
            **common, depths=sweep.parse_numbers(depths, float, "Depths"), lengths=sweep.parse_numbers(lengths, int, "Filler lengths"),
            question=question,
        )
    except ValueError as exc:
        st.error(md_escape(str(exc)))
        return None


TABLE_LABELS = {  # the table's columns (English, as in the CSV) -> the header the page shows (English: the name itself)
    "policy": N_("policy"), "params": N_("params"), "ratio": N_("ratio"), "budget": N_("budget"), "kv_bytes": N_("kv_bytes"),
    "kv_bytes_peak": N_("kv_bytes_peak"), "kv_bytes_full": N_("kv_bytes_full"), "kv_pct": N_("kv_pct"), "ppl": N_("ppl"),
    "kl_full": N_("kl_full"), "top1_agree": N_("top1_agree"), "seconds": N_("seconds"), "depth": N_("depth"), "length": N_("length"),
    "prompt_tokens": N_("prompt_tokens"), "found": N_("found"), "answer": N_("answer"), "series": N_("series"),
}


def column_config() -> dict:
    """How the table shows its numbers (the CSV keeps them whole), its headers in the page's language."""
    plain = {k: st.column_config.Column(_(label)) for k, label in TABLE_LABELS.items()}

    def number(k: str, **kw):
        return st.column_config.NumberColumn(_(TABLE_LABELS[k]), **kw)

    return plain | {
        "chosen": st.column_config.CheckboxColumn(_("chosen"), help=_("Chosen on the chart or in this table (tick a row's box at the left)"), width="small"),
        "kv_pct": number("kv_pct", format="%.1f%%", help=_("KV held at the end, % of the full cache")),
        "ppl": number("ppl", format="%.3f"), "kl_full": number("kl_full", format="%.4f", help=_(KL_HELP)),
        "top1_agree": number("top1_agree", format="percent"), "seconds": number("seconds", format="%.1f"),
        "depth": number("depth", format="%g"),
        # bytes in compact form (553K): whole numbers pushed the last column out of a 1,400 px page
        **{k: number(k, format="compact", help=_("{column}: bytes (the CSV has them whole)").format(column=k.replace("_", " ")))
           for k in ("kv_bytes", "kv_bytes_peak", "kv_bytes_full")},
    }


# ------------------------------------------------------------------------------ running


@st.cache_data(ttl=900, show_spinner=False)
def _speed(_loaded, model_key: tuple) -> sweep_job.Speed:
    return sweep_job.measure_speed(_loaded.model, _loaded.tokenizer)


def _duration(s: float) -> str:
    return _("{n} s").format(n=f"{s:.0f}") if s < 120 else _("{n} min").format(n=f"{s / 60:.1f}")


def estimate_text(est: sweep_job.Estimate) -> str:
    """``Estimate.text()`` in the page's language (the CLI keeps ``text()``, English)."""
    low, high = _duration(est.low_s), _duration(est.high_s)
    span = low if low == high else _("{low} to {high}").format(low=low, high=high)
    return _("Estimated time: about {span} for {runs} runs on {device} (an estimate from a full-cache forward timed here just now: "
             "{prefill} ms per prompt token, {step} ms per decode step; policies that score attention or quantize take longer per "
             "step, and a busy machine is slower).").format(
        span=span, runs=est.runs, device=est.speed.device, prefill=f"{1000 * est.speed.prefill_s_per_token:.1f}",
        step=f"{1000 * est.speed.step_s:.0f}")


class _Results:
    """Finished sweeps, shared by the sessions of this process: the newest MAX_RESULTS."""

    def __init__(self):
        self.lock, self.items = threading.Lock(), OrderedDict()

    def get(self, key):
        with self.lock:
            return self.items.get(key)

    def put(self, key, result) -> None:
        with self.lock:
            self.items[key] = result
            while len(self.items) > MAX_RESULTS:
                self.items.popitem(last=False)


@st.cache_resource(show_spinner=False)
def results() -> _Results:
    return _Results()


def run_panel(loaded, settings: sweep.SweepSettings, model_key: tuple) -> sweep.SweepResult | None:
    """The estimate, Run and Stop, the progress of a running sweep; the result of these settings
    when there is one (a finished sweep, or this session's stopped one), else this session's last
    result on this model (its settings differ: the page marks it stale)."""
    ss, key = st.session_state, (model_key, settings)
    try:
        the_plan = sweep.plan(loaded.tokenizer, settings, max_context=loaded.summary.max_context)
        prompt_tokens, new_tokens, runs = sweep_job.plan_size(the_plan)
        check_limits(operator_settings().limits, prompt_tokens=prompt_tokens, new_tokens=new_tokens, runs=runs)
    except ValueError as exc:  # PolicyError, PromptError, InputError: the message names the problem
        st.error(md_escape(str(exc)))
        return None
    box = st.container(border=True)
    c_est, c_run, c_stop = box.columns([6, 1, 1], vertical_alignment="center")
    with st.spinner(_("Timing a forward on this machine, for the estimate ...")):
        speed = _speed(loaded, model_key)
    c_est.caption(estimate_text(sweep_job.estimate(the_plan, speed)))
    if JOBS.run_requested() and JOBS.job is None:
        started = JOBS.start(sweep_job.SweepJob(
            loaded.model, loaded.tokenizer, settings, model_name=loaded.summary.name, max_context=loaded.summary.max_context,
        ))  # refused with a message when larger than the operator's caps
        if started is not None:
            ss[K + "job_key"] = key
    JOBS.buttons(c_run, c_stop)
    job = JOBS.follow(box)
    if job is not None:
        job_key, result = ss.pop(K + "job_key"), job.result  # no result: it failed (JOBS.messages says why)
        if result is not None and result.stopped:
            ss[STOPPED] = (job_key, result)
        elif result is not None:
            results().put(job_key, result)
        st.rerun()
    JOBS.messages(once=True)
    stopped = ss.get(STOPPED)
    result = results().get(key) or (stopped[1] if stopped and stopped[0] == key else None)
    if result is not None:
        ss[SHOWN] = (model_key, result)
        return result
    shown = ss.get(SHOWN)  # this session's last result on this model stays, marked stale by the page
    return shown[1] if shown and shown[0] == model_key else None


def changed_settings(ran: sweep.SweepSettings, now: sweep.SweepSettings) -> list[str]:
    """What the controls say now that the sweep on screen (``ran``) did not, named as they name it."""
    changed = []
    if now.policies != ran.policies:
        changed.append(_("the policies are **{policies}**").format(policies=md_escape(", ".join(now.policies))))
    if now.task != ran.task:
        changed.append(_("Task is **{task}**").format(task=_(TASKS[now.task])))
    for name, before, after in ((_("Ratios"), ran.ratios, now.ratios), (_("Budgets"), ran.budgets, now.budgets)):
        if before != after and after:
            none = _("none")
            changed.append(f"{name} {_numbers(before) or none} → {_numbers(after)}")
    if now.task == "ppl":
        if now.text != ran.text:
            changed.append(_("the text is **{text}**").format(text=text_label(TEXTS[0] if now.text == long_document() else TEXTS[1])))
        changed += stale.count_change(_("Context (prompt tokens)"), ran.context, now.context)
        changed += stale.count_change(_("Continuation (forced tokens)"), ran.continuation, now.continuation)
    else:
        for name, before, after in ((_("Needle depths"), ran.depths, now.depths), (_("Filler lengths"), ran.lengths, now.lengths)):
            if before != after:
                changed.append(f"{name} {_numbers(before)} → {_numbers(after)}")
        if now.question != ran.question:
            changed.append(_("The policy compresses **{what}**").format(what=_(QUESTION[now.question])))
    return changed


# ------------------------------------------------------------------------------ chosen runs

SELECTION = K + "selection"  # the rows chosen on the Pareto chart or in the table, shared by both


def chosen_rows(n_rows: int, token: object) -> tuple[list[int], str, str, bool]:
    """The rows chosen on the chart (a click, a box, a lasso) or ticked in the table, whichever
    changed last: (row indices, the chart's key, the table's key, whether the chart must draw the
    choice itself). The widget that was not used is drawn afresh (a new key) showing the other's
    choice, so both always show the same rows. ``token``: the result; a new one starts empty."""
    ss = st.session_state
    sel = ss.get(SELECTION)
    if sel is None or sel["token"] != token:
        sel = ss[SELECTION] = dict(token=token, rows=[], source="chart", chart=0, table=0)
    chart_key, table_key = f"{K}pareto.{sel['chart']}", f"{K}table.{sel['table']}"
    picked = new_selection(chart_key)
    ticked = list(((ss.get(table_key) or {}).get("selection") or {}).get("rows", []))
    if picked is not None:
        data = [p.get("customdata") for p in picked.get("points", [])]
        sel["rows"] = sorted({int(d) for d in data if isinstance(d, (int, float)) and 0 <= d < n_rows})
        sel["source"], sel["table"] = "chart", sel["table"] + 1
        table_key = f"{K}table.{sel['table']}"
    elif ticked != ss.get(table_key + ".seen", []):
        ss[table_key + ".seen"] = ticked
        sel["rows"] = sorted(i for i in ticked if 0 <= i < n_rows)
        sel["source"], sel["chart"] = "table", sel["chart"] + 1
        chart_key = f"{K}pareto.{sel['chart']}"
    return list(sel["rows"]), chart_key, table_key, sel["source"] == "table"


def _row_line(row: dict) -> str:
    """A chosen run's numbers in one line of markdown (its answer escaped)."""
    where = [_("ratio {ratio}").format(ratio=f"{row['ratio']:g}") if row.get("ratio") is not None else "",
             _("{budget} per KV head").format(budget=row["budget"]) if row.get("budget") is not None else ""]
    head = _("**{series}** ({where}): KV held {pct}%").format(
        series=md_escape(str(row["series"])), where=_(", ").join(w for w in where if w) or _("no budget"), pct=f"{float(row['kv_pct']):.1f}")
    if row["task"] == "ppl":
        return head + _(", perplexity {ppl}, KL {kl} nats, top-1 {top1}").format(
            ppl=f"{float(row['ppl']):.3f}", kl=f"{float(row['kl_full']):.4f}", top1=f"{float(row['top1_agree']):.0%}")
    found = _("key found") if row.get("found") else _("key missed")
    return head + _(", depth {depth}, filler {n} tokens: {found}, answer “{answer}”").format(
        depth=f"{float(row['depth']):g}", n=row["length"], found=found, answer=md_escape(str(row["answer"])))


def open_runs(rows: list[dict], chosen: list[int], settings: sweep.SweepSettings, tokenizer) -> None:
    """The chosen runs' numbers, each with a link to Live, and a link to Compare with them side by
    side (one chosen: with another policy's point nearest in memory)."""
    if not chosen:
        st.caption(_("Click a point (or drag a box over several) on the chart, or tick rows in the table, to see those runs "
                     "and open them in Live or Compare with the same model, prompt, policy and budget."))
        return
    sidebar = {k: st.query_params[k] for k in run_links.SIDEBAR_KEYS if k in st.query_params}
    tokens = run_links.new_tokens(settings)
    box = st.container(border=True)
    box.markdown("**" + ngettext("Chosen: {n} run", "Chosen: {n} runs", len(chosen)).format(n=len(chosen)) + "**"
                 + (_(" (the first 8 shown)") if len(chosen) > 8 else ""))
    try:
        for i in chosen[:8]:
            left, right = box.columns([5, 2], vertical_alignment="center")
            left.markdown(_row_line(rows[i]))
            prompt, chat = run_links.row_prompt(tokenizer, settings, rows[i])
            right.link_button(_("Open in Live"), run_links.live_link(sidebar, prompt, chat, rows[i], tokens), icon=":material/play_circle:", width="stretch")
        pair = run_links.partners(rows, chosen)
        if len(pair) >= 2:
            prompt, chat = run_links.row_prompt(tokenizer, settings, rows[pair[0]])
            names = _(" and ").join(run_links.row_spec(rows[j]) for j in pair)
            box.link_button(_("Compare {names}").format(names=names), run_links.compare_link(sidebar, prompt, chat, [rows[j] for j in pair], tokens), icon=":material/compare:")
    except ValueError as exc:  # a prompt or spec that no longer builds: said, not raised
        box.error(md_escape(str(exc)))
    box.caption((
        _("Each link opens a new tab with the sweep's prompt (its first context tokens, without the chat template) and {n} new "
          "tokens. Live and Compare decode greedily, where the perplexity sweep forced the text's continuation, so their numbers "
          "are of that run, not these.") if settings.task == "ppl" else
        _("Each link opens a new tab with the sweep's prompt and {n} new tokens. Live and Compare decode greedily, where the "
          "perplexity sweep forced the text's continuation, so their numbers are of that run, not these.")
    ).format(n=tokens))
