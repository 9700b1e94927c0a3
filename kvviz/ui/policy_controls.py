"""Policy controls built from a policy's parameter spec: a policy picker, an optional companion
(a store for a selector, or a selector for a store), a widget per parameter (ranges, defaults
and help from the spec) and one budget control. New policies appear without changes here."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from kvviz import policies
from kvviz.policies import Param


@dataclass
class PolicyChoice:
    spec: str  # "h2o", "snapkv+quant"
    params: dict  # {policy name: {param: value}}
    budget: int | None
    ratio: float | None
    names: list[str]  # the policies of the spec, picked first


def policy_label(name: str) -> str:
    cls = policies.get(name)
    return f"{name} · {cls.family}" + (" (store)" if cls.kind == "store" else "")


def describe_policy(name: str) -> str:
    """Markdown: what the policy does and its paper (our own text, not user input)."""
    cls = policies.get(name)
    summary = " ".join(cls.summary.split())
    return f"**{name}** · {cls.family}. {summary}\n\n*Paper:* {cls.paper}"


def param_widget(policy: str, name: str, spec: Param, key: str):
    """One widget for one parameter; returns its value (None for an unset optional one)."""
    label, help_ = name, spec.help
    if spec.optional:
        if not st.checkbox(f"set {name}", value=spec.default is not None, key=f"{key}.set", help=help_):
            return None
    if spec.choices:
        choices = list(spec.choices)
        index = choices.index(spec.default) if spec.default in choices else 0
        return st.selectbox(label, choices, index=index, key=key, help=help_)
    if spec.type is bool:
        return st.checkbox(label, value=bool(spec.default), key=key, help=help_)
    if spec.type is int:
        lo = int(spec.min) if spec.min is not None else None
        hi = int(spec.max) if spec.max is not None else None
        value = spec.default if spec.default is not None else (lo if lo is not None else 0)
        return st.number_input(label, min_value=lo, max_value=hi, value=int(value), step=1, key=key, help=help_)
    if spec.type is float:
        lo = float(spec.min) if spec.min is not None else None
        hi = float(spec.max) if spec.max is not None else None
        value = float(spec.default if spec.default is not None else (lo or 0.0))
        step = (hi - lo) / 100 if lo is not None and hi is not None else max(abs(value) / 10, 0.01)
        return st.number_input(label, min_value=lo, max_value=hi, value=value, step=step, format="%g", key=key, help=help_)
    return st.text_input(label, value="" if spec.default is None else str(spec.default), key=key, help=help_)


def param_widgets(policy: str, key: str, columns: int = 2) -> dict:
    """Widgets for every parameter of ``policy`` but budget/ratio; {param: value}."""
    specs = policies.tunable_params(policy)
    if not specs:
        st.caption(f"{policy} has no parameters to set.")
        return {}
    values = {}
    cols = st.columns(min(columns, len(specs)))
    for i, (name, spec) in enumerate(specs.items()):
        with cols[i % len(cols)]:
            values[name] = param_widget(policy, name, spec, key=f"{key}.{policy}.{name}")
    return values


def budget_control(key: str, prompt_len: int | None) -> tuple[int | None, float | None]:
    """Kept entries per layer and KV head, as a number or as a fraction of the prompt."""
    ratio_spec = policies.BudgetSelector.params()["ratio"]
    mode = st.radio(
        "Budget", ["fraction of the prompt", "entries per KV head"], horizontal=True, key=f"{key}.budget_mode",
        help="How many entries each layer and KV head keeps. "
        + policies.BudgetSelector.params()["budget"].help,
    )
    if mode == "entries per KV head":
        default = max(1, round((prompt_len or 64) * ratio_spec.default))
        budget = st.number_input(
            "budget (entries per KV head)", min_value=1, value=int(default), step=1, key=f"{key}.budget",
            help="Must not exceed the prompt's length.",
        )
        shown = f"{budget} of {prompt_len} prompt tokens" if prompt_len else None
        if shown:
            st.caption(f"Keeps {shown} ({100 * budget / prompt_len:.0f}%) per layer and KV head.")
        return int(budget), None
    ratio = st.slider(
        "ratio (kept fraction of the prompt)", min_value=0.01, max_value=1.0, value=float(ratio_spec.default), step=0.01,
        key=f"{key}.ratio", help=ratio_spec.help,
    )
    if prompt_len:
        st.caption(f"Keeps {max(1, round(ratio * prompt_len))} of {prompt_len} prompt tokens per layer and KV head.")
    return None, float(ratio)


def policy_controls(key: str = "policy", prompt_len: int | None = None, default: str = "h2o") -> PolicyChoice:
    """The picker, the explanation, the companion and every parameter widget."""
    names = list(policies.registry())
    index = names.index(default) if default in names else 0
    left, right = st.columns([1, 1])
    with left:
        name = st.selectbox("Policy", names, index=index, format_func=policy_label, key=f"{key}.name")
        others = policies.companions(name)
        what = "a store (how kept entries are held)" if policies.is_selector(name) else "a selector (which entries stay)"
        companion = None
        if others:
            picked = st.selectbox(
                f"Compose with {what}", ["none"] + others, key=f"{key}.{name}.companion",
                format_func=lambda n: "none" if n == "none" else policy_label(n),
                help="A selector and a store compose, e.g. snapkv+quant: SnapKV chooses, quant packs what stays.",
            )
            companion = None if picked == "none" else picked
    spec = policies.compose(name, companion)
    with right:
        with st.container(border=True):
            st.markdown(describe_policy(name))
            if companion:
                st.markdown(describe_policy(companion))
    names_in_spec = [n for n in (name, companion) if n]
    params = {}
    budget = ratio = None
    with left:
        for n in names_in_spec:
            if len(names_in_spec) > 1:
                st.markdown(f"**{n}**")
            params[n] = param_widgets(n, key)
        if policies.takes_budget(spec):
            budget, ratio = budget_control(key, prompt_len)
    return PolicyChoice(spec=spec, params=params, budget=budget, ratio=ratio, names=names_in_spec)
