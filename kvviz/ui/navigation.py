"""Every page of the app, registered once: ``app.py`` hands them to ``st.navigation`` and the home
page shows them as cards. Page files stay in ``pages/``; adding a page is adding its file and
one ``PageInfo`` here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from kvviz.i18n import N_, _

# The app's files (app.py, pages/, .streamlit/): an installed kvviz carries a copy in kvviz/_app/
# (setup.py), a checkout has them at its root; kvviz.commands.app.app_root() looks in the same order.
_KVVIZ = Path(__file__).resolve().parents[1]
ROOT = _KVVIZ / "_app" if (_KVVIZ / "_app" / "app.py").is_file() else _KVVIZ.parent
# The browser tab's icon, shipped with kvviz: a Material icon as page_icon is fetched from a font
# CDN, which fails offline (an emoji is drawn locally, so pages may use one).
FAVICON = str(Path(__file__).resolve().parents[1] / "data" / "favicon.png")


@dataclass(frozen=True)
class PageInfo:
    path: str  # the page file, relative to the repository root
    title: str  # English, marked with N_: shown through _() (``shown_title``)
    icon: str  # a Material icon, ":material/name:"
    blurb: str  # one or two sentences for the home page's card, English like the title

    @property
    def shown_title(self) -> str:
        return _(self.title)

    @property
    def shown_blurb(self) -> str:
        return _(self.blurb)

    @property
    def url_path(self) -> str:
        """The page's address, http://host/<url_path>: its file name without the number
        (pages/2_Live_Policy.py -> Live_Policy), the name Streamlit's own pages/ discovery gives it
        too (see ``take_over_from_pages_directory``)."""
        return Path(self.path).stem.split("_", 1)[1]

    def page(self, default: bool = False) -> st.Page:
        return st.Page(str(ROOT / self.path), title=self.shown_title, icon=self.icon, url_path=None if default else self.url_path, default=default)


HOME = PageInfo("pages/0_Home.py", N_("Home"), ":material/home:", N_("What the KV cache is, and the model in use."))

PAGES: list[PageInfo] = [
    PageInfo(
        "pages/1_Attention.py", N_("Attention explorer"), ":material/grid_on:",
        N_("Attention heatmaps per layer and head over your prompt: which earlier tokens each head reads "
        "when it writes the next one."),
    ),
    PageInfo(
        "pages/2_Live_Policy.py", N_("Live policy"), ":material/play_circle:",
        N_("Run a cache policy (H2O, SnapKV, a sliding window, ...) live while the model generates, and watch "
        "which tokens it keeps or evicts at each step and how much memory that saves."),
    ),
    PageInfo(
        "pages/3_Compare.py", N_("Compare policies"), ":material/compare:",
        N_("Two to four policies on the same prompt, side by side against the full cache: the tokens each keeps, "
        "its memory, where its output diverges, and why it evicted a token. Share the view as a link, a run "
        "bundle or an HTML report."),
    ),
    PageInfo(
        "pages/4_Tradeoffs.py", N_("Tradeoffs"), ":material/balance:",
        N_("Sweep policies over memory budgets on one text: perplexity, KL and top-1 against the full cache on a "
        "Pareto chart, passkey grids, and which policy is best at 25% memory. Presets tell a story in one click."),
    ),
    PageInfo(
        "pages/5_Paged_Cache.py", N_("Paged cache"), ":material/view_module:",
        N_("vLLM's PagedAttention on the real model: a pool of KV blocks, block tables, prefix sharing, "
        "copy-on-write, preemption, the holes token eviction leaves, and the memory paging saves."),
    ),
    PageInfo(
        "pages/6_Memory_Calculator.py", N_("Memory calculator"), ":material/calculate:",
        N_("The KV cache of real architectures (Llama, Mistral, Qwen, Gemma, DeepSeek's MLA) from their configs: "
        "per token, per sequence, with quantization or a policy, and how many requests fit on a GPU."),
    ),
    PageInfo(
        "pages/7_Quantization_Lab.py", N_("Quantization lab"), ":material/tune:",
        N_("The real keys and values of your prompt, layer by layer: the outlier key channels, and what per-token "
        "or per-channel quantization at 8, 4 and 2 bits (and KIVI) costs in error, attention and the next token."),
    ),
    PageInfo(
        "pages/8_Dedup.py", N_("Dedup"), ":material/content_copy:",
        N_("A repeated span held once in the KV cache: how far the copy is from the full cache per layer, what the "
        "next tokens pay, and recomputing the tokens that deviate most (CacheBlend)."),
    ),
]


def take_over_from_pages_directory() -> None:
    """Called first by every page. Until some run of the process has called ``st.navigation``,
    Streamlit serves an app with a ``pages/`` folder the old way: a link opened before any other
    page runs that page file directly, under a page list of file names with ``app`` on top. A page
    that finds itself run that way switches the process to ``st.navigation`` and reruns: the same
    address then goes through ``app.py`` and gets the titled page list."""
    from streamlit.runtime.pages_manager import PagesManager

    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


def navigation() -> st.navigation:
    """The app's navigation: the home page first, then every page in ``PAGES``."""
    return st.navigation([HOME.page(default=True)] + [p.page() for p in PAGES])
