"""kvviz home page: what the KV cache is, what each page shows, and the model in use."""

from pathlib import Path

import pandas as pd
import streamlit as st

st.set_page_config(page_title="kvviz", page_icon=":material/memory:", layout="wide")

from kvviz.models import format_bytes  # noqa: E402  (after set_page_config)
from kvviz.ui.sidebar import sidebar  # noqa: E402

PAGES_DIR = Path(__file__).parent / "pages"
PAGES = {  # page file stem without its number -> (title, what it shows)
    "Attention": (
        "Attention explorer",
        "Attention heatmaps per layer and head over your prompt: which earlier tokens each head "
        "reads when it writes the next one.",
    ),
    "Live_Policy": (
        "Live policy",
        "Run a cache policy (H2O, SnapKV, a sliding window, ...) live while the model generates, "
        "and watch which tokens it keeps or evicts at each step and how much memory that saves.",
    ),
}

state = sidebar()
summary = state.loaded.summary

st.title("kvviz: inside the KV cache")
st.markdown(
    """
When a transformer writes text, every layer turns each token it has read into a **key** and a
**value** vector. The **KV cache** keeps them, so that each new token computes only its own key and
value and then attends over everything stored. The cache grows by a fixed number of bytes per token,
and on long prompts it, not the weights, fills the GPU. **Cache policies** decide what to keep, merge
or quantize once memory runs short; kvviz runs a real model on your prompt, applies a policy to its
real cache, and shows what was kept, what it cost and what it changed.
"""
)

st.subheader("Pages")
found = {path.stem.split("_", 1)[-1]: path for path in sorted(PAGES_DIR.glob("*.py"))}
columns = st.columns(max(len(PAGES), 1))
for column, (stem, (title, text)) in zip(columns, PAGES.items()):
    with column.container(border=True):
        if stem in found:
            st.page_link(f"pages/{found[stem].name}", label=f"**{title}**", icon=":material/arrow_forward:")
        else:
            st.markdown(f"**{title}** (coming soon)")
        st.write(text)
for stem, path in found.items():
    if stem not in PAGES:
        st.page_link(f"pages/{path.name}", label=stem.replace("_", " "), icon=":material/arrow_forward:")
st.caption("Pick the model and the prompt in the sidebar; every page uses them.")

st.subheader("Model")
if summary.device == "cpu":
    st.info(
        f"Running on CPU: no GPU is in use. {summary.name} is small enough to run live here; "
        "on a machine with a CUDA GPU kvviz picks it by itself (bfloat16).",
        icon=":material/memory:",
    )
metrics = st.columns(5)
metrics[0].metric("Layers", summary.n_layers)
metrics[1].metric("Query / KV heads", f"{summary.n_q_heads} / {summary.n_kv_heads}")
metrics[2].metric("Head dim", summary.head_dim)
metrics[3].metric("KV cache per token", format_bytes(summary.kv_bytes_per_token))
metrics[4].metric("Max context", f"{summary.max_context:,}")
st.table(pd.DataFrame(summary.as_rows(), columns=["Property", "Value"]), hide_index=True, hide_header=True)
