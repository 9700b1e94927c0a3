"""The memory calculator's settings in its URL: every choice of the page, read once when a link is
opened and written back on every run (a default is left out, so links stay short).

A value that cannot be used is ignored with a notice naming the parameter, why, and what the page
uses instead (shown in the sidebar's notice area, as for every page's links).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import streamlit as st

from kvviz.calculator import memory as calc
from kvviz.calculator.architectures import parse_config_text
from kvviz.i18n import _
from kvviz.ui.state import from_url, report_problem, to_url

CONFIG_URL_MAX = 4000  # characters of a pasted config a link carries (a compact hub config.json: 700-1,500)


@dataclass(frozen=True)
class LinkSetting:
    url: str  # the query parameter
    key: str  # the session_state key the page's widget persists under
    default: Any
    parse: Callable[[str], Any]  # the URL's text -> a value; ValueError saying why not
    show: Callable[[Any], str] = str  # a value as the notice names it


def choice(options: list, cast=str) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value not in options:
            raise ValueError(_("{value} is not one of {options}").format(value=calc.shown(text), options=", ".join(map(str, options))))
        return value

    return parse


def choices(options: list, ignore=(), what: str = "") -> Callable[[str], list]:
    """A multiselect's value: names separated by commas, each one of ``options`` (``what`` names
    them in a notice instead of listing them all; an N_-marked constant, translated where shown)."""
    def parse(text: str) -> list:
        names = [n.strip() for n in text.split(",") if n.strip() and n.strip() not in ignore]
        unknown = [n for n in names if n not in options]
        if unknown:
            if what:
                raise ValueError(_("{value} is not {what}").format(value=calc.shown(unknown[0]), what=_(what)))
            raise ValueError(_("{value} is not one of {options}").format(value=calc.shown(unknown[0]), options=", ".join(map(str, options))))
        return list(dict.fromkeys(names))

    return parse


def number(lo, hi, step, cast=int) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = cast(float(text)) if cast is float else cast(text)
        except ValueError:
            raise ValueError(_("{value} is not a number").format(value=calc.shown(text))) from None
        steps = (value - lo) / step
        if not lo <= value <= hi or abs(steps - round(steps)) > 1e-9:
            raise ValueError(_("{value} is not from {lo} to {hi} in steps of {step}").format(value=f"{value:g}", lo=f"{lo:g}", hi=f"{hi:g}", step=f"{step:g}"))
        return value

    return parse


def config_text(text: str) -> str:
    calc.architecture_from_json_text(text)  # CalcError (a ValueError) says what is wrong
    return text


def read_link(settings: list[LinkSetting]) -> None:
    """Seed the settings a link carries (the first time this session meets each parameter)."""
    state = st.session_state
    for s in settings:
        found, text = from_url(s.url, "")
        if not found:
            continue
        try:
            state[s.key] = s.parse(text)
        except ValueError as exc:
            used = state.get(s.key, s.default)
            report_problem(s.url, _("link setting '{url}' ignored: {reason}; the page uses {used} instead.").format(
                url=s.url, reason=str(exc).rstrip(".。"), used=s.show(used)))


def compact_config(text: str) -> str | None:
    """A pasted config as the link carries it: compact JSON, or None when it is not a usable
    config or too long for a link."""
    try:
        compact = json.dumps(parse_config_text(text), separators=(",", ":"), ensure_ascii=False)
    except calc.CalcError:
        return None
    return compact if len(compact) <= CONFIG_URL_MAX else None


def write_link(settings: list[LinkSetting], values: dict[str, Any]) -> None:
    """The current values into the address bar (a default one is left out)."""
    for s in settings:
        value = values[s.url]
        to_url(s.url, s.default if value is None else value, s.default)


def listed(value) -> str:
    return ", ".join(map(str, value)) if value else _("none")

