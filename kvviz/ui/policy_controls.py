"""Policy controls built from a policy's parameter spec: a policy picker, an optional companion
(a store for a selector, or a selector for a store), a widget per parameter (ranges, defaults
and help from the spec) and one budget control. They build one ``PolicySpec``.

Every choice survives page switches, and with ``url="p"`` the whole spec lives in the URL as its
text form (``?p=h2o:recent=8,ratio=0.25``), so a copied link reopens it. New policies appear
without changes here.

Translation (issue 19): a policy's ``summary``, ``family``, ``others`` and each parameter's help are
marked with ``N_`` where the policy defines them (``summary = N_('''...''')``, ``param(8, N_("..."))``),
so the msgid is the raw attribute, indentation and line breaks included; this module looks the raw
text up with ``_()`` and only then joins its whitespace (``shown``). Paper titles stay as written."""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from kvviz import policies
from kvviz.i18n import N_, _, bound
from kvviz.policies import Param, PolicyError
from kvviz.policies.params import ratio_budget
from kvviz.policies.spec import PolicySpec, budget_notes
from kvviz.ui import state as ui_state
from kvviz.ui.token_html import md_escape

KEEP = "kvviz_keep::"  # permanent session_state copies of the widgets' values
_PLUGINS_WARNED = "kvviz_policy_plugins_warned"


def shown(text: str) -> str:
    """A policy's N_-marked text (summary, family, parameter help) in the session's language, its
    whitespace joined: looked up raw, as extracted (an empty text stays empty: gettext("") is the
    catalog's header)."""
    return _joined(_(text)) if text else text


_CJK = "\u3000-\u303f\u4e00-\u9fff\uff00-\uffef"  # CJK punctuation, ideographs, full-width forms
_CJK_GAP = re.compile(f"(?<=[{_CJK}]) (?=[{_CJK}])")


def _joined(text: str) -> str:
    """A wrapped text on one line: its lines joined by a space, except between two Chinese
    characters (Chinese puts no space where a line was broken)."""
    return _CJK_GAP.sub("", " ".join(text.split()))


def policy_label(name: str) -> str:
    cls = policies.get(name)
    label = f"{name} · {shown(cls.family)}"
    if cls.kind == "store":
        label = _("{label} (store)").format(label=label)
    return label + (" · " + _("plugin") if policies.plugin_source(name) else "")


def describe_policy(name: str) -> str:
    """Markdown: what the policy does and its paper, linked when known (our own text, not user input)."""
    cls = policies.get(name)
    paper = f"[{cls.paper}]({cls.paper_url})" if cls.paper_url else cls.paper
    text = _("**{name}** · {family}. {summary}").format(name=name, family=shown(cls.family), summary=shown(cls.summary))
    text += "\n\n" + _("*Paper:* {paper}").format(paper=paper)
    where = policies.plugin_source(name)  # the file's name only: visitors get no server paths
    return text + ("\n\n" + _("*Plugin:* {file}").format(file=f"`{md_escape(Path(where).name)}`") if where else "")


def plugin_warnings() -> None:
    """Policy plugins that did not load: one warning, the first time this session draws the controls."""
    problems = policies.plugin_problems()
    if problems and not st.session_state.get(_PLUGINS_WARNED):
        st.session_state[_PLUGINS_WARNED] = True
        st.warning("  \n".join(md_escape(p.short()) for p in problems), icon=":material/extension_off:")


def _kept(widget, key: str, default, **kwargs):
    """A widget with key ``key`` whose value outlives page switches."""
    return ui_state.persisted(widget, KEEP + key, default, widget_key=key, **kwargs)


def param_widget(policy: str, name: str, spec: Param, key: str):
    """One widget for one parameter; returns its value (None for an unset optional one)."""
    label, help_ = name, shown(spec.help)
    if spec.optional:
        if not _kept(st.checkbox, f"{key}.set", spec.default is not None, label=_("set {name}").format(name=name), help=help_):
            return None
    if spec.choices:
        return _kept(st.selectbox, key, spec.default, label=label, options=list(spec.choices), help=help_)  # values: not translated
    if spec.type is bool:
        return _kept(st.checkbox, key, bool(spec.default), label=label, help=help_)
    if spec.type is int:
        lo = int(spec.min) if spec.min is not None else None
        hi = int(spec.max) if spec.max is not None else None
        value = spec.default if spec.default is not None else (lo if lo is not None else 0)
        return _kept(st.number_input, key, int(value), label=label, min_value=lo, max_value=hi, step=1, help=help_)
    if spec.type is float:
        lo = float(spec.min) if spec.min is not None else None
        hi = float(spec.max) if spec.max is not None else None
        value = float(spec.default if spec.default is not None else (lo or 0.0))
        step = (hi - lo) / 100 if lo is not None and hi is not None else max(abs(value) / 10, 0.01)
        return _kept(st.number_input, key, value, label=label, min_value=lo, max_value=hi, step=step, format="%g", help=help_)
    return _kept(st.text_input, key, "" if spec.default is None else str(spec.default), label=label, help=help_)


def param_widgets(policy: str, key: str, columns: int = 2) -> dict:
    """Widgets for every parameter of ``policy`` but budget/ratio; {param: value}."""
    specs = policies.tunable_params(policy)
    if not specs:
        st.caption(_("{policy} has no parameters to set.").format(policy=policy))
        return {}
    values = {}
    cols = st.columns(min(columns, len(specs)))
    for i, (name, spec) in enumerate(specs.items()):
        with cols[i % len(cols)]:
            values[name] = param_widget(policy, name, spec, key=f"{key}.{policy}.{name}")
    return values


BUDGET_MODES = [N_("fraction of the prompt"), N_("entries per KV head")]  # widget values: English; shown with _()


def budget_caption(budget: int, prompt_len: int) -> str:
    """What a budget of entries keeps of the prompt: a share only when it is one (a budget past the
    prompt keeps all of it and leaves the rest to generated tokens)."""
    if budget < prompt_len:
        return _("Keeps {budget} of {prompt_len} prompt tokens ({share}%) per layer and KV head.").format(
            budget=f"{budget:,}", prompt_len=f"{prompt_len:,}", share=f"{100 * budget / prompt_len:.0f}")
    if budget > prompt_len:
        return _("Keeps all {prompt_len} prompt tokens (budget {budget}); the other {room} entries are for generated tokens: "
                 "nothing is evicted until the cache passes {budget} entries.").format(
            prompt_len=f"{prompt_len:,}", budget=f"{budget:,}", room=f"{budget - prompt_len:,}")
    return _("Keeps all {prompt_len} prompt tokens (budget {budget}): nothing is evicted until the cache passes {budget} entries.").format(
        prompt_len=f"{prompt_len:,}", budget=f"{budget:,}")


def budget_control(key: str, prompt_len: int | None, url: bool = False) -> tuple[int | None, float | None]:
    """Kept entries per layer and KV head, as a number or as a fraction of the prompt. With
    ``url`` the choice also lives in the URL (``budget_mode``, ``ratio``, ``budget``): one such
    control per page."""
    ratio_spec = policies.BudgetSelector.params()["ratio"]
    urls = dict(mode="budget_mode", ratio="ratio", budget="budget") if url else dict(mode=None, ratio=None, budget=None)
    mode = _kept(
        st.radio, f"{key}.budget_mode", BUDGET_MODES[0], label=_("Budget"), options=BUDGET_MODES, format_func=bound(_),
        horizontal=True, url=urls["mode"],
        help=_("How many entries each layer and KV head keeps.") + " " + shown(policies.BudgetSelector.params()["budget"].help),
    )
    if mode == "entries per KV head":
        default = ratio_budget(ratio_spec.default, prompt_len or 64)
        budget = _kept(
            st.number_input, f"{key}.budget", int(default), label=_("budget (entries per KV head)"), min_value=1, step=1,
            help=_("Must not exceed the prompt's length."), url=urls["budget"],
        )
        if prompt_len:
            st.caption(budget_caption(int(budget), prompt_len))
        return int(budget), None
    ratio = _kept(
        st.slider, f"{key}.ratio", float(ratio_spec.default), label=_("ratio (kept fraction of the prompt)"),
        min_value=0.01, max_value=1.0, step=0.01, help=shown(ratio_spec.help), url=urls["ratio"],
    )
    if prompt_len:
        st.caption(_("Keeps {kept} of {prompt_len} prompt tokens per layer and KV head.").format(
            kept=ratio_budget(ratio, prompt_len), prompt_len=prompt_len))
    return None, float(ratio)


def show_budget_notes(where, spec: PolicySpec | None, prompt_len: int | None) -> None:
    """The notes on what ``spec`` keeps at its budget on this prompt, in the container ``where``:
    a warning for settings that do not fit the budget, a caption for the rest. Nothing when the
    budget does not fit the prompt at all (a run says why)."""
    if spec is None or not prompt_len:
        return
    try:
        notes = budget_notes(spec, prompt_len)
    except PolicyError:
        return
    for level, text in notes:
        (where.warning if level == "warning" else where.caption)(text)  # our own text: names and numbers


def _seed_from_url(key: str, url: str, default: str) -> None:
    """When a link carries a spec (``?url=h2o:recent=8,ratio=0.25``), set the widgets' kept
    values from it before they are drawn. A spec that does not parse is ignored, with a message."""
    try:
        found, text = ui_state.from_url(url, "")
        spec = PolicySpec.parse(text) if found else None
    except PolicyError as exc:
        kept = st.session_state.get(KEEP + f"{key}.name", default)
        ui_state.report_problem(url, _("link setting '{url}' ignored: {error}; the page uses {policy} with its own settings instead.")
                                .format(url=url, error=str(exc).rstrip("."), policy=kept))
        return
    if spec is not None:
        seed_controls(key, spec)


def seed_controls(key: str, spec: PolicySpec) -> None:
    """Set the kept values of the controls ``policy_controls(key)`` draws to ``spec``, before
    they are drawn (a link, a preset, a reopened bundle)."""
    ss = st.session_state
    selectors = [n for n in spec.policies if policies.is_selector(n)]
    first = (selectors or spec.policies)[0]
    ss[KEEP + f"{key}.name"] = first
    others = [n for n in spec.policies if n != first]
    ss[KEEP + f"{key}.{first}.companion"] = others[0] if others else "none"
    for policy, values in spec.params:
        for name, value in values:
            ss[KEEP + f"{key}.{policy}.{name}"] = value
    seed_budget(key, spec.budget, spec.ratio)


def seed_budget(key: str, budget: int | None, ratio: float | None) -> None:
    """Set the kept values of ``budget_control(key)`` before it is drawn (nothing when both are None)."""
    ss = st.session_state
    if budget is not None:
        ss[KEEP + f"{key}.budget_mode"], ss[KEEP + f"{key}.budget"] = BUDGET_MODES[1], budget
    elif ratio is not None:
        ss[KEEP + f"{key}.budget_mode"], ss[KEEP + f"{key}.ratio"] = BUDGET_MODES[0], ratio


def policy_controls(
    key: str = "policy", prompt_len: int | None = None, default: str = "h2o", url: str | None = None,
    shared_budget: tuple[int | None, float | None] | None = None, narrow: bool = False,
) -> PolicySpec | None:
    """The picker, the explanation, the companion and every parameter widget: the PolicySpec they
    describe, or None (with the reason shown) when the combination is not valid.

    ``shared_budget`` (budget, ratio): a budget chosen elsewhere (shared by several policies): no budget
    control is drawn and the spec takes this one. ``narrow``: one column (the explanation in a
    popover), for controls side by side."""
    if url is not None:
        _seed_from_url(key, url, default)
    names = list(policies.registry())
    plugin_warnings()
    if narrow:  # picker, then the explanation's popover, then the parameters
        head, about, body = st.container(), st.container(), st.container()
    else:  # picker and parameters on the left, the explanation on the right
        head, about = st.columns([1, 1])
        body = head
    with head:
        name = _kept(st.selectbox, f"{key}.name", default if default in names else names[0], label=_("Policy"), options=names, format_func=bound(policy_label))
        others = policies.companions(name)
        what = _("a store (how kept entries are held)") if policies.is_selector(name) else _("a selector (which entries stay)")
        companion = None
        if others:
            picked = _kept(
                st.selectbox, f"{key}.{name}.companion", "none", label=_("Compose with {what}").format(what=what),
                options=["none"] + others, format_func=bound(lambda n: _("none") if n == "none" else policy_label(n)),
                help=_("A selector and a store compose, e.g. snapkv+quant: SnapKV chooses, quant packs what stays."),
            )
            companion = None if picked == "none" else picked
    composed = policies.compose(name, companion)
    with about:
        about_label = _("About {name} and {companion}").format(name=name, companion=companion) if companion else _("About {name}").format(name=name)
        with st.popover(about_label, width="stretch") if narrow else st.container(border=True):
            st.markdown(describe_policy(name))
            if companion:
                st.markdown(describe_policy(companion))
    names_in_spec = [n for n in (name, companion) if n]
    params = {}
    budget = ratio = None
    with body:
        for n in names_in_spec:
            if len(names_in_spec) > 1:
                st.markdown(f"**{n}**")
            params[n] = param_widgets(n, key)
        if shared_budget is not None:
            budget, ratio = shared_budget if policies.takes_budget(composed) else (None, None)
        elif policies.takes_budget(composed):
            budget, ratio = budget_control(key, prompt_len)
    try:
        spec = PolicySpec.create(composed, params, budget=budget, ratio=ratio)
    except PolicyError as exc:
        st.error(md_escape(str(exc)))
        return None
    if url is not None:
        ui_state.to_url(url, spec.to_text(), PolicySpec.create(default).to_text())
    return spec
