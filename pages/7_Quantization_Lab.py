"""Quantization lab: the real model's cache for the sidebar's prompt, quantized per token and per
channel at 8, 4 and 2 bits, with what it costs in error, attention, the next token and bytes."""

import pandas as pd
import streamlit as st

from kvviz.quant_lab import run as lab
from kvviz.charts import quant_lab as charts
from kvviz.i18n import _
from kvviz.record.text import PromptError, encode_prompt
from kvviz.ui.a11y import chart
from kvviz.ui.job_view import page_work
from kvviz.ui.page import start_page
from kvviz.ui.state import persisted
from kvviz.ui.token_html import md_escape

state = start_page(
    _("Quantization lab"),
    "🎛️",
    _("The keys and values the model really caches for your prompt, one layer and KV head at a time: where "
      "their outliers sit, and what per-token or per-channel quantization at 8, 4 and 2 bits costs in "
      "reconstruction error, in attention, and in the next token, next to the bytes the packed store holds."),
    _("Load a model in the sidebar."),
)
ss = st.session_state
loaded = state.loaded
try:
    ids = encode_prompt(loaded.tokenizer, state.prompt, chat=state.chat)[: lab.MAX_TOKENS]
except PromptError as exc:
    st.info(_("{error} The lab needs a prompt.").format(error=md_escape(str(exc))))
    st.stop()

c_layer, c_head, c_residual = st.columns(3)
n_layers, n_kv = loaded.summary.n_layers, loaded.summary.n_kv_heads
with c_layer:
    layer = persisted(st.slider, "qlab.layer", n_layers // 2, url="layer", label=_("Layer"), min_value=0, max_value=n_layers - 1)
with c_head:
    head = persisted(st.selectbox, "qlab.head", 0, url="kv_head", label=_("KV head"), options=list(range(n_kv)))
with c_residual:
    residual = persisted(st.select_slider, "qlab.residual", 32, url="residual", label=_("KIVI residual R (tokens)"), options=list(lab.RESIDUALS),
                         help=_("KIVI keeps the R newest values and the keys of the unfinished group of R tokens in full precision."))
shown_tokens = _("{n} prompt tokens").format(n=len(ids))
if len(ids) == lab.MAX_TOKENS:
    shown_tokens += _(" (the first {cap})").format(cap=lab.MAX_TOKENS)
st.caption(f"{shown_tokens} · {loaded.summary.name} · {loaded.summary.dtype}")

key = (state.model_spec, loaded.summary.dtype, tuple(ids), layer)
if ss.get("qlab.key") != key:
    try:
        with st.spinner(_("Reading layer {layer}'s cache and quantizing it...").format(layer=layer)), page_work(_("Reading the cache")):
            lc = lab.read_layer(loaded.model, ids, layer)
            ss["qlab.grid"] = lab.error_grid(lc)
    except ValueError as exc:
        st.error(md_escape(str(exc)))
        st.stop()
    ss["qlab.key"], ss["qlab.lc"] = key, lc
    ss.pop("qlab.next", None)
lc = ss["qlab.lc"]

# ------------------------------------------------------------------------------ distributions
st.subheader(_("Keys and values, channel by channel"))
stats = lab.channel_stats(lc, head)
chart(charts.magnitude_figure(stats, layer, head), key="qlab.magnitudes", width="stretch")
st.caption(_(
    "Keys are shown after RoPE, exactly as the cache holds them. A few key channels carry values far larger than the "
    "rest, in every token: a per-token scale must stretch to cover them and loses the small channels, while a "
    "per-channel scale (KIVI's choice for keys) gives each channel its own range. Values have no such channels; "
    "KIVI quantizes them per token, since the attention output mixes them token by token."
))
chart(charts.token_profile_figure(stats), key="qlab.tokens", width="stretch")

# ------------------------------------------------------------------------------ per token against per channel
st.subheader(_("Per token against per channel"))
m, results = ss["qlab.grid"]
rows = [r.row() for r in results]
st.caption(_(
    "The first {m} tokens of layer {layer} (all KV heads), quantized by kvviz's packed store (asymmetric, a scale and a "
    "zero point per group of G, in the model's dtype): G channels of a token, or G tokens of a channel. The attention KL "
    "uses the layer's real queries (RoPE applied) over the quantized keys, causal, per query head."
).format(m=m, layer=layer))
chart(charts.error_grid_figure(rows), key="qlab.grid", width="stretch")
pct = st.column_config.NumberColumn(format="percent")
shown = charts.table_columns()  # each row field's column header, in the page's language
st.dataframe(
    pd.DataFrame(rows).drop(columns=["axis"]).rename(columns=shown), hide_index=True, width="stretch",
    column_config={shown["key error"]: pct, shown["value error"]: pct, shown["output error"]: pct, shown["of full"]: pct,
                   shown["attention KL"]: st.column_config.NumberColumn(format="%.2e"),
                   shown["bytes"]: st.column_config.NumberColumn(format="localized")},
)
st.markdown(lab.axis_summary(results))

# ------------------------------------------------------------------------------ the next token
st.subheader(_("What the next token pays"))
st.caption(_(
    "The whole model runs with each store (kvviz's quant and kivi policies) on the prompt, teacher-forced on the full "
    "cache's greedy tokens; the KL of each next-token distribution against the full cache's, and the bytes the "
    "cache holds. Per-channel groups still filling stay in full precision."
))
c_new, c_run = st.columns([1, 3], vertical_alignment="bottom")
with c_new:
    new_tokens = persisted(st.number_input, "qlab.new_tokens", 8, url="new", label=_("New tokens"), min_value=1, max_value=lab.MAX_NEW_TOKENS,
                           help=_("Steps of teacher forcing, each compared with the full cache."))
if c_run.button(_("Run the model with quantized caches"), key="qlab.run", icon=":material/play_arrow:"):
    schemes = lab.next_token_schemes(residual)
    with st.spinner(_("{n} runs of the model...").format(n=len(schemes) + 1)), page_work(_("The quantized runs")):
        ss["qlab.next"] = lab.next_token_kl(loaded.model, loaded.tokenizer, ids, schemes, new_tokens=int(new_tokens))
if ss.get("qlab.next"):
    next_rows = [r.row() for r in ss["qlab.next"]]
    chart(charts.next_token_figure(next_rows, ss["qlab.next"][0].kv_bytes_full), key="qlab.next_chart", width="stretch")
    st.dataframe(pd.DataFrame(next_rows).drop(columns=["axis"]).rename(columns=shown), hide_index=True, width="stretch",
                 column_config={shown["top-1 agreement"]: pct, shown["of full"]: pct,
                                shown["cache bytes"]: st.column_config.NumberColumn(format="localized")})

# ------------------------------------------------------------------------------ KIVI's window
st.subheader(_("KIVI's residual window on these numbers"))
scheme = lab.Scheme("kivi", 2, 32, residual)
key_err, value_err, keys_full, values_full = lab.token_errors(lc, head, scheme)
chart(charts.residual_window_figure(key_err, value_err, keys_full, values_full, residual), key="qlab.window", width="stretch")
st.markdown(lab.window_summary(lc, scheme))
