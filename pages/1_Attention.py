"""Attention explorer: where the model looks, per layer and head, with and without a cache policy."""

import numpy as np
import streamlit as st
import torch

from kvviz.attention import maps as attention_maps
from kvviz.model import capture
from kvviz.charts import attention_detail as detail_charts
from kvviz.charts import attention_overview as overview_charts
from kvviz.charts._attention_common import pool_name
from kvviz.i18n import _
from kvviz.model.loading import out_of_memory_message
from kvviz.policies import PolicyError
from kvviz.policies.spec import PolicySpec
from kvviz.record.text import PromptError, encode_prompt, token_texts
from kvviz.ui.a11y import chart
from kvviz.ui import attention_memo as memo
from kvviz.ui import attention_panels as panels
from kvviz.ui.page import start_page
from kvviz.ui.policy_controls import policy_controls
from kvviz.ui.state import persisted
from kvviz.ui.token_html import attention_tokens_html, md_escape

state = start_page(
    _("Attention explorer"),
    "🔍",
    _("Where the model looks: every layer and head over the prompt and the tokens it generates. "
      "Attention is computed on demand from the layer's queries and keys, pooled into tiles for long "
      "prompts, so the whole context of the model stays fast to explore."),
    _("Load a model in the sidebar to see its attention."),
)
ss = st.session_state
loaded = state.loaded
summary = loaded.summary

try:
    prompt_ids = encode_prompt(loaded.tokenizer, state.prompt, chat=state.chat, max_context=summary.max_context)
except PromptError as exc:
    st.info(_("{error} The attention explorer needs a prompt that fits the model.").format(error=md_escape(str(exc))))
    st.stop()

# ------------------------------------------------------------------------------ controls and the run
view = panels.view_controls(room=max(0, min(64, summary.max_context - len(prompt_ids))))
with st.expander(_("Cache policy: grey out what a policy evicts"), expanded=bool(ss.get("attn.use_policy"))):
    use_policy = persisted(st.toggle, "attn.use_policy", False, url="cache", label=_("Run a cache policy"),
                           help=_("Generate with the policy, then grey the keys it evicted."))
    choice = policy_controls(key="attn.policy", prompt_len=len(prompt_ids), url="policy") if use_policy else None
    if use_policy and choice is None:
        st.stop()
new_tokens = max(1, view.new_tokens) if choice is not None else view.new_tokens

trace = None
try:
    if choice is not None or new_tokens > 0:
        spec = choice if choice is not None else PolicySpec.create("full")
        with st.spinner(_("Generating {n} tokens with the {policy} cache...").format(n=new_tokens, policy=spec.name)):
            trace = memo.generate(loaded, prompt_ids, new_tokens, spec)
    ids = trace.all_ids if trace is not None else prompt_ids
    tokens = trace.tokens if trace is not None else token_texts(loaded.tokenizer, prompt_ids)
    n, prompt_len = len(ids), len(prompt_ids)
    if n > 2048 and summary.device == "cpu":
        st.info(_("{n} tokens on the CPU: the first view of every layer takes a while (about a minute per 2,000 tokens). "
                  "Later views reuse it.").format(n=f"{n:,}"))
    with st.spinner(_("Computing attention of {layers} layers × {heads} heads over {n} tokens...").format(
            layers=summary.n_layers, heads=summary.n_q_heads, n=f"{n:,}")):
        ov = memo.overview(loaded, ids, prompt_len, view.pool)
except (PolicyError, PromptError, ValueError) as exc:
    st.error(_("The run could not start: {error}").format(error=md_escape(str(exc))))
    st.stop()
except torch.OutOfMemoryError as exc:
    st.error(out_of_memory_message(exc))
    st.stop()

# ------------------------------------------------------------------------------ overview
panels.selection(ov, memo.ids_digest(ids), n)
st.subheader(_("Every layer and head"))
st.caption(_(
    "One small heatmap per head: queries down, keys across, {per_cell} ({pool} of the tile). Rows are the {heads} query "
    "heads, banded by the {kv_heads} KV heads they share ({group} query heads read the same keys and values: "
    "grouped-query attention). Click a square to open it below."
).format(per_cell=overview_charts.per_cell(ov.tile), pool=pool_name(view.pool), heads=ov.n_q_heads, kv_heads=ov.n_kv_heads,
         group=ov.n_q_heads // ov.n_kv_heads))
chart(
    overview_charts.overview_figure(ov, selected=(ss["attn.layer"], ss["attn.head"]), scale=view.scale),
    key="attn.overview_chart", on_select="rerun", selection_mode="points", width="stretch",
)

# ------------------------------------------------------------------------------ detail
st.subheader(_("One head in detail"))
layer, head, token, window = panels.detail_controls(ov, tokens, prompt_len, view.max_cells)
try:
    qk = memo.layer_qk(loaded, ids, layer, prompt_len, ov)
except (capture.CaptureError, torch.OutOfMemoryError) as exc:
    st.error(out_of_memory_message(exc) if isinstance(exc, torch.OutOfMemoryError) else md_escape(str(exc)))
    st.stop()
if qk.sliding_window:
    st.caption(_("Layer {layer} is a sliding-window layer: each query reads only the last {window} keys "
                 "(the model's own window, blank in the map), whatever a cache policy keeps.").format(layer=layer, window=f"{qk.sliding_window:,}"))
kv_head = qk.kv_head(head)
evicted = step = None
if trace is not None and choice is not None:
    evicted, step = panels.evictions(trace, layer, kv_head)

detail = memo.view(loaded, ids, qk, head, q_range=window, k_range=window, max_cells=view.max_cells, pool=view.pool, evicted=evicted, prompt_len=prompt_len)
chart(
    detail_charts.detail_figure(detail, tokens, selected_token=token, scale=view.scale),
    key="attn.detail_chart", on_select="rerun", selection_mode="points", width="stretch",
)

row = attention_maps.attention_rows(qk, head, [token])[0]  # (seq,) what the selected token attends to
m1, m2, m3, m4 = st.columns(4)
m1.metric(_("Attention on the first 4 tokens"), f"{row[:4].sum():.0%}", help=_("From the selected token's query."))
m2.metric(_("Entropy of its row"), _("{entropy} nats").format(entropy=f"{detail.row_entropy[token]:.2f}"))
m3.metric(_("Attention it receives (H2O score)"), f"{detail.key_score[token]:.2f}", help=_("Summed over every query of the sequence."))
top = int(np.argmax(row))
m4.metric(_("It looks most at"), f"#{top}", help=_("{token} with weight {weight}").format(token=md_escape(repr(tokens[top])), weight=f"{row[top]:.2f}"))
if evicted is not None:
    panels.eviction_metrics(trace, evicted, step, layer, kv_head)

st.caption(_(
    "What token {token} attends to in this head (darker = more; hover a token for its weight), "
    "evicted keys greyed and struck through, generated tokens underlined."
).format(token=token))
with st.container(border=True):
    start = max(0, token - 240)  # its recent context, and a little after it
    st.html(attention_tokens_html(tokens, prompt_len=prompt_len, weights=row, selected=token, evicted=evicted, start=start, stop=token + 40))

d1, d2 = st.columns([1, 3])
d1.download_button(
    _("Download the matrix in view (CSV)"), detail_charts.view_csv(detail, tokens),
    file_name=f"attention_L{layer}_H{head}_{detail.q_start}-{detail.q_stop}.csv", mime="text/csv", on_click="ignore",
)
d2.caption(_("A PNG of any chart: the camera icon in the chart's toolbar."))

panels.head_profiles(ov, layer, head)
