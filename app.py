"""kvviz: the app's entry point. ``streamlit run app.py`` serves every page in
``kvviz.ui.navigation.PAGES``; the home page is ``pages/0_Home.py``."""

import streamlit as st

from kvviz.ui.navigation import FAVICON, navigation, take_over_from_pages_directory

st.set_page_config(page_title="kvviz", page_icon=FAVICON, layout="wide")

take_over_from_pages_directory()
navigation().run()
