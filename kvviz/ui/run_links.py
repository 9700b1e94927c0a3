"""Links from a point of a sweep to the run behind it: the Live and Compare pages with the same
model, prompt, policy and budget, written in the URL state those pages read (``kvviz.ui.state``:
``model``, ``example``/``prompt``/``chat``, ``policy`` or ``p1``..``p4``, ``new``). A link opens a
new session, which takes its settings from the URL; Compare's ``step`` makes it run at once.

The prompt is the sweep's own: for the perplexity task the first ``context`` tokens of its text
(decoded), for the passkey task the passkey prompt of the row's filler length and depth. Live and
Compare decode greedily from it, where the perplexity sweep forced the text's continuation."""

from __future__ import annotations

import math
from typing import Mapping, Sequence
from urllib.parse import urlencode

from kvviz.policies.spec import PolicySpec
from kvviz.record.examples import passkey_prompt
from kvviz.sweep.run import SweepSettings, ppl_tokens
from kvviz.ui import compare_view
from kvviz.live import run as live_run
from kvviz.ui.navigation import PAGES
from kvviz.ui.sidebar import CUSTOM
from kvviz.ui.state import encode

SIDEBAR_KEYS = ("model", "device", "dtype")  # the sidebar's choices a link carries on, as the URL has them
MAX_COMPARED = 4  # Compare shows two to four policies


def row_spec(row: Mapping) -> str:
    """The row's policy as a spec text with its ratio (or, without one, its budget)."""
    spec = PolicySpec.parse(str(row["series"]))
    if spec.takes_budget and row.get("ratio") is not None:
        spec = spec.with_budget(ratio=float(row["ratio"]))
    elif spec.takes_budget and row.get("budget") is not None:
        spec = spec.with_budget(budget=int(row["budget"]))
    return spec.to_text()


def row_prompt(tokenizer, settings: SweepSettings, row: Mapping) -> tuple[str, bool]:
    """(prompt text, chat template) of the run behind ``row``."""
    if settings.task == "ppl":
        prompt, _ = ppl_tokens(tokenizer, settings.text, settings.context, settings.continuation)
        return tokenizer.decode(prompt, skip_special_tokens=True), False
    text, _ = passkey_prompt(int(row["length"]), float(row["depth"]), seed=settings.passkey_seed)
    return text, True


def new_tokens(settings: SweepSettings) -> int:
    return settings.continuation if settings.task == "ppl" else settings.new_tokens


def partners(rows: Sequence[Mapping], chosen: Sequence[int]) -> list[int]:
    """Rows to open in Compare: the chosen ones (one per policy spec, at most four); a single one
    with the point of another policy nearest to it in memory, so Compare has two."""
    out: list[int] = []
    for i in chosen:
        if row_spec(rows[i]) not in {row_spec(rows[j]) for j in out} and len(out) < MAX_COMPARED:
            out.append(i)
    if len(out) == 1:
        mine = rows[out[0]]
        others = [j for j, r in enumerate(rows) if r["series"] not in (mine["series"], "full") and math.isfinite(float(r["kv_pct"]))]
        if others:
            out.append(min(others, key=lambda j: abs(float(rows[j]["kv_pct"]) - float(mine["kv_pct"]))))
    return out


def _page(title_stem: str) -> str:
    return next(p.url_path for p in PAGES if p.url_path == title_stem)


def _query(sidebar: Mapping[str, str], prompt: str, chat: bool, **params) -> str:
    base = {k: sidebar[k] for k in SIDEBAR_KEYS if k in sidebar}
    return urlencode(base | {"example": CUSTOM, "prompt": encode(prompt), "chat": encode(chat)} | {k: encode(v) for k, v in params.items()})


def live_link(sidebar: Mapping[str, str], prompt: str, chat: bool, row: Mapping, tokens: int) -> str:
    """A relative link to the Live page for ``row`` (``sidebar``: the URL's model, device, dtype)."""
    return _page("Live_Policy") + "?" + _query(sidebar, prompt, chat, policy=row_spec(row), new=min(max(tokens, 1), live_run.MAX_NEW_TOKENS))


def compare_link(sidebar: Mapping[str, str], prompt: str, chat: bool, rows: Sequence[Mapping], tokens: int) -> str:
    """A relative link to the Compare page with ``rows`` (two to four) side by side, each at its
    own budget; it runs when opened and shows the last step."""
    if not 2 <= len(rows) <= MAX_COMPARED:
        raise ValueError(f"Compare takes 2 to {MAX_COMPARED} policies, not {len(rows)}")
    new = min(max(tokens, 1), compare_view.MAX_NEW_TOKENS)
    specs = {f"p{k + 1}": row_spec(r) for k, r in enumerate(rows)}
    return _page("Compare") + "?" + _query(sidebar, prompt, chat, n=len(rows), new=new, same=False, step=new, **specs)
