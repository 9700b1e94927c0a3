"""Run bundles in a page: a row of downloads (the bundle, a standalone HTML report, CSV of the
tables) and an upload box that opens a bundle again. Any page that makes runs can use them.

Downloads are generated when clicked (``data`` callables), not on every rerun. An uploaded file
is read once, in the uploader's callback, before the page is drawn, so that the page can restore
its controls from the bundle; a bad file gets a one-line message (escaped) and the page goes on.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd
import streamlit as st

from kvviz.runs.bundle import MAX_BYTES, BundleError, RunBundle, load, page_of
from kvviz.ui.sidebar import operator_settings
from kvviz.ui.token_html import md_escape
from kvviz.i18n import _

MIB = 1024 * 1024


def upload_help() -> str:
    return _("A run bundle (.json) downloaded from kvviz, at most {mib} MiB. It is checked before it opens: "
             "its schema and version, every field's type, the shapes of the traces and every policy's parameters. "
             "Only JSON is read, never pickled Python objects.").format(mib=MAX_BYTES // MIB)


def downloads(
    key: str,
    stem: str,
    bundle_json: Callable[[], str],
    bundle_bytes: int,
    report_html: Callable[[], str] | None = None,
    tables: dict[str, Callable[[], pd.DataFrame]] | None = None,
) -> None:
    """One row of download buttons: the run bundle (unless it would be too large to open again),
    the HTML report, one CSV per table (``tables``' names N_-marked: shown translated, file names English)."""
    items = [(_("Run bundle (JSON)"), bundle_json, f"{stem}.bundle.json", "application/json")]
    if report_html is not None:
        items.append((_("Report (HTML)"), report_html, f"{stem}.html", "text/html"))
    for name, table in (tables or {}).items():
        items.append((_("{name} (CSV)").format(name=_(name)), lambda table=table: table().to_csv(index=False), f"{stem}-{name.lower().replace(' ', '-')}.csv", "text/csv"))
    too_large = bundle_bytes > MAX_BYTES
    for i, (column, (label, make, file_name, mime)) in enumerate(zip(st.columns(len(items)), items)):
        column.download_button(
            label, data=make, file_name=file_name, mime=mime, key=f"{key}.download.{i}", on_click="ignore",
            icon=":material/download:", width="stretch", disabled=i == 0 and too_large,
            help=_("about {mib} MiB; reopen it below").format(mib=f"{bundle_bytes / MIB:.1f}") if i == 0 else None,
        )
    if too_large:
        st.caption(_(
            "The run bundle would be {mib} MiB, more than the {cap} MiB a bundle may hold to be "
            "opened again: compare fewer policies, generate fewer tokens or shorten the prompt. The report and the "
            "tables hold the results."
        ).format(mib=f"{bundle_bytes / MIB:.1f}", cap=MAX_BYTES // MIB))


def upload_box(key: str, on_open: Callable[[RunBundle], None], kind: str | None = None, label: str | None = None) -> None:
    """A file uploader for bundles. A valid one is handed to ``on_open`` (which may raise
    BundleError when the bundle does not fit the page); problems are shown under the box. The
    operator may allow smaller files than a bundle may be (KVVIZ_MAX_UPLOAD_MB)."""
    ss = st.session_state
    limit = min(MAX_BYTES, operator_settings().limits.max_upload_bytes)
    setting = _(" (this server's setting KVVIZ_MAX_UPLOAD_MB)") if limit < MAX_BYTES else ""
    label = label or _("Open a run bundle")

    def opened() -> None:
        uploaded = ss.get(key)
        ss.pop(f"{key}.message", None)
        if uploaded is None:
            return
        try:
            if uploaded.size > limit:
                raise BundleError(_("The file is {mib} MiB; kvviz opens bundles of at most {cap} MiB{setting}.").format(
                    mib=f"{uploaded.size / MIB:.1f}", cap=limit // MIB, setting=setting))
            bundle = load(uploaded.getvalue())
            if kind is not None and bundle.kind != kind:
                raise BundleError(_("This is a run bundle from the {page} page: open it there.").format(page=page_of(bundle.kind)))
            on_open(bundle)
        except BundleError as exc:
            ss[f"{key}.message"] = ("error", f"{uploaded.name}: {exc}")
        else:
            ss[f"{key}.message"] = ("success", _("Opened {name}.").format(name=uploaded.name))

    st.file_uploader(
        _("{label} (JSON, at most {cap} MiB)").format(label=label, cap=limit // MIB), type=["json"], key=key, on_change=opened,
        help=upload_help(),
        max_upload_size=limit // MIB,
    )
    level, message = ss.get(f"{key}.message", (None, None))
    if level == "error":
        st.error(md_escape(message), icon=":material/error:")
    elif level == "success":
        st.success(md_escape(message), icon=":material/folder_open:")
