"""Streamlit glue: the only part of kvviz that imports streamlit.

- ``sidebar.sidebar()``: the shared sidebar every page calls first (model, device, prompt).
- ``model_resource.get_model()``: the process-wide model cache, with visible progress.
"""
