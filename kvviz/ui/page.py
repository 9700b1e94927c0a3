"""What every page starts with: its config, the shared sidebar, a title and a caption."""

from __future__ import annotations

import streamlit as st

from kvviz.ui.a11y import page_setup
from kvviz.ui.navigation import take_over_from_pages_directory
from kvviz.ui.sidebar import SidebarState, sidebar


def start_page(title: str, icon: str, caption: str, no_model: str) -> SidebarState:
    """Set the page up and return the sidebar's state; stops the page with ``no_model`` shown
    when no model is loaded, and with the operator's cap when the prompt is longer than it."""
    take_over_from_pages_directory()
    st.set_page_config(page_title=f"{title} · kvviz", page_icon=icon, layout="wide")
    page_setup()
    state = sidebar()
    st.title(title)
    st.caption(caption)
    if state is None or state.loaded is None:
        st.info(no_model)
        st.stop()
    if state.prompt_refusal:
        st.error(state.prompt_refusal, icon=":material/block:")
        st.stop()
    return state
