"""kvviz: the app's entry point. ``streamlit run app.py`` serves every page in
``kvviz.ui.navigation.PAGES``; the home page is ``pages/0_Home.py``."""

import streamlit as st

st.set_page_config(page_title="kvviz", page_icon=":material/memory:", layout="wide")

from kvviz.ui.navigation import navigation, take_over_from_pages_directory  # noqa: E402  (after set_page_config)

take_over_from_pages_directory()
navigation().run()
