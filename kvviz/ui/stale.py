"""One way to say that the result on screen came from earlier settings (issue 24): the same
warning, words and icon on Live, Compare, Tradeoffs and the Paged cache."""

from __future__ import annotations

import streamlit as st

from kvviz.i18n import _

ICON = ":material/history:"


def message(changed: list[str]) -> str:
    """The warning's markdown for the phrases of ``changed`` (each already escaped by its caller)."""
    return _("This result is from earlier settings. The controls above now say: {changes}. Press **Run** to run them.").format(
        changes=_("; ").join(changed))


def warn(changed: list[str]) -> bool:
    """Show the warning when anything changed; whether it was shown."""
    if changed:
        st.warning(message(changed), icon=ICON)
    return bool(changed)


def count_change(name: str, before, now) -> list[str]:
    """``name before → now`` when a number differs, else nothing (how Live says its new tokens)."""
    return [] if now is None or now == before else [f"{name} {before} → {now}"]


def switch_change(name: str, before: bool, now: bool | None) -> list[str]:
    """``name on`` / ``name off`` when a switch differs, else nothing."""
    return [] if now is None or bool(now) == bool(before) else [(_("{name} on") if now else _("{name} off")).format(name=name)]
