"""Streamlit glue: the only part of kvviz that imports streamlit.

- ``sidebar.sidebar()``: the shared sidebar every page calls first (model, device, prompt).
- ``model_resource.get_model()``: the process-wide model cache, with visible progress.
"""

from kvviz import i18n


def session_language() -> str | None:
    """The language this Streamlit session chose (the sidebar's switch, or a link's ``lang=`` before
    the switch has read it); None outside a script run."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    if get_script_run_ctx(suppress_warning=True) is None:
        return None
    import streamlit as st

    lang = st.session_state.get(i18n.LANG)
    return lang if lang is not None else st.query_params.get("lang")


i18n.set_language_source(session_language)
