"""kvviz home page: what the KV cache is, what each page shows, and the model in use.

The page is drawn before the model is there: the default model loads on a background thread
(``warm_start``) and torch is imported only once it is loaded, so that a visitor reads and clicks
this page within a second or two of a server start (benchmarks/startup.py measures it)."""

import streamlit as st

from kvviz.i18n import _
from kvviz.ui.model_resource import wait_for_warm_start, warm_start
from kvviz.ui.navigation import FAVICON, PAGES, take_over_from_pages_directory

take_over_from_pages_directory()

st.set_page_config(page_title="kvviz", page_icon=FAVICON, layout="wide")
warm_start()

st.title(_("kvviz: inside the KV cache"))
st.markdown(
    _("""
When a transformer writes text, every layer turns each token it has read into a **key** and a
**value** vector. The **KV cache** keeps them, so that each new token computes only its own key and
value and then attends over everything stored. The cache grows by a fixed number of bytes per token,
and on long prompts it, not the weights, fills the GPU. **Cache policies** decide what to keep, merge
or quantize once memory runs short; kvviz runs a real model on your prompt, applies a policy to its
real cache, and shows what was kept, what it cost and what it changed.
""")
)

st.subheader(_("Pages"))
per_row = 3
for row in range(0, len(PAGES), per_row):
    columns = st.columns(per_row)
    for column, info in zip(columns, PAGES[row : row + per_row]):
        with column.container(border=True):
            st.page_link(info.page(), label=f"**{info.shown_title}**", icon=info.icon)
            st.write(info.shown_blurb)
st.caption(_("Pick the model and the prompt in the sidebar; every page uses them."))

st.subheader(_("Model"))
wait_for_warm_start(_("Loading the model in the background; the pages above can be opened meanwhile"))

import pandas as pd  # noqa: E402  (imported once the model is there: the page above is drawn without them)

from kvviz.record.metrics import format_bytes  # noqa: E402
from kvviz.ui.sidebar import sidebar  # noqa: E402

state = sidebar()
summary = state.loaded.summary
if summary.device == "cpu":
    st.info(
        _("Running on CPU: no GPU is in use. {name} is small enough to run live here; "
          "on a machine with a CUDA GPU kvviz picks it by itself (bfloat16).").format(name=summary.name),
        icon=":material/memory:",
    )
metrics = st.columns(5)
metrics[0].metric(_("Layers"), summary.n_layers)
metrics[1].metric(_("Query / KV heads"), f"{summary.n_q_heads} / {summary.n_kv_heads}")
metrics[2].metric(_("Head dim"), summary.head_dim)
metrics[3].metric(_("KV cache per token"), format_bytes(summary.kv_bytes_per_token))
metrics[4].metric(_("Max context"), f"{summary.max_context:,}")
st.table(pd.DataFrame(summary.as_rows(), columns=[_("Property"), _("Value")]), hide_index=True, hide_header=True)
