"""Dedup: a prompt's repeated spans held once in the KV cache, what the copy costs layer by layer
and in the next tokens, and what recomputing a share of its tokens buys back (CacheBlend)."""

import streamlit as st

from kvviz.charts import dedup as charts
from kvviz.i18n import _
from kvviz.dedup.run import MAX_COMPARED, MAX_NEW_TOKENS, MAX_PROMPT_TOKENS as MAX_TOKENS, MIN_SPAN, run_dedup
from kvviz.record.examples import REPEATED_PASSAGE_EXAMPLE
from kvviz.record.metrics import format_bytes
from kvviz.record.text import PromptError, encode_prompt
from kvviz.ui.a11y import bring_into_view, chart
from kvviz.ui.job_view import page_work
from kvviz.ui.page import start_page
from kvviz.ui.token_html import md_escape

state = start_page(
    _("Dedup"),
    "🪞",
    _("Prompts repeat themselves: the same retrieved passage twice, a template in every turn. Prefix caching shares only "
    "a common prefix; here a repeated span in the middle is held once, its later occurrence reading the first one's "
    "keys (re-rotated to its positions) and values. After layer 0 a token's KV depends on everything before it, so "
    "the copy is not exact: see how far it is, layer by layer, what the next tokens pay, and how much recomputing the "
    "tokens that deviate most closes the gap."),
    _("Load a model in the sidebar."),
)
ss = st.session_state
if st.button(_("Example: a passage twice, then a question"), key="dedup.example"):
    ss["dedup.text"] = REPEATED_PASSAGE_EXAMPLE
text = st.text_area(_("Prompt"), key="dedup.text", height=140, placeholder=_("A prompt with a span that appears more than once"))
c_len, c_new, c_chat = st.columns(3)
min_len = c_len.slider(_("Shortest repeated span (tokens)"), *MIN_SPAN, 8, key="dedup.min_len")
new_tokens = c_new.slider(_("Next tokens compared"), 1, min(MAX_COMPARED, MAX_NEW_TOKENS), 8, key="dedup.new_tokens")
chat = c_chat.toggle(_("Chat template"), False, key="dedup.chat")

if st.button(_("Run"), type="primary", key="dedup.run"):
    try:
        ids = encode_prompt(state.loaded.tokenizer, text, chat=chat)
        if len(ids) > MAX_TOKENS:
            raise PromptError(_("The prompt is {n} tokens; this page takes at most {cap}.").format(n=f"{len(ids):,}", cap=MAX_TOKENS))
        with st.spinner(_("Prefilling the full cache, then the deduplicated one at each recompute share...")), page_work(_("Deduplicating")):
            run = run_dedup(state.loaded.model, ids, min_len=min_len, new_tokens=new_tokens)
        ss["dedup.result"] = run.summary(state.loaded.tokenizer) | {"full_text": state.loaded.tokenizer.decode(run.full_ids)}
    except (PromptError, ValueError) as exc:
        ss.pop("dedup.result", None)
        st.error(md_escape(str(exc)))
result = ss.get("dedup.result")
if result is None:
    st.info(_("Pick the example or type a prompt with a repeated span, then Run."))
    st.stop()

bring_into_view("dedup", id(result))
st.subheader(_("Repeated spans"))
tokens_col, text_col = _("tokens"), _("text")
st.dataframe([{tokens_col: s["length"], _("at positions"): ", ".join(map(str, s["occurrences"])), text_col: s["text"]}
              for s in result["spans"]], hide_index=True, width="stretch",
             column_config={tokens_col: st.column_config.NumberColumn(width="small"), text_col: st.column_config.TextColumn(width="large")})
zero = result["recompute"][0]
m1, m2, m3, m4 = st.columns(4)
m1.metric(_("Copied tokens"), _("{copied} of {total}").format(copied=result["copied_tokens"], total=result["prompt_tokens"]))
m2.metric(_("Bytes held"), format_bytes(zero["kv_bytes"]),
          delta=_("{change} against the full cache").format(change=f"{zero['kv_bytes'] / result['full_bytes'] - 1:.1%}"), delta_color="off",
          help=_("No token recomputed; the full cache holds {bytes}.").format(bytes=format_bytes(result["full_bytes"])))
m3.metric(_("KL to the full cache"), _("{kl} nats").format(kl=f"{zero['kl_mean']:.4f}"), help=_("Mean over the next tokens, recompute share 0."))
m4.metric(_("Top-1 agreement"), f"{zero['top1_agreement']:.0%}", help=_("The next tokens, teacher-forced on the full cache's output."))
st.caption(_("Next tokens from the full cache: {text}").format(text=md_escape(repr(result["full_text"]))))

st.subheader(_("The copy, layer by layer"))
chart(charts.deviation_figure(result["key_deviation"], result["value_deviation"]), key="dedup.deviation")
st.caption(_(
    "Relative distance of the copied tokens' keys and values from those the full cache computed for them. Layer 0 is "
    "exact (a token's layer-0 KV depends on the token and its position only, and the re-rotation moves the position); "
    "from layer 1 on, attention mixes in the tokens before each occurrence, and they differ."
))
st.subheader(_("Recomputing a share of the copied tokens"))
chart(charts.recompute_figure(result["recompute"], result["full_bytes"]), key="dedup.recompute")
st.dataframe([{_("recomputed"): f"{r['share']:.0%}", _("tokens per layer"): r["recomputed_tokens_per_layer"],
               _("bytes held"): format_bytes(r["kv_bytes"]), _("of full"): f"{r['kv_bytes'] / result['full_bytes']:.1%}",
               _("KL (mean, nats)"): round(r["kl_mean"], 5), _("top-1"): f"{r['top1_agreement']:.0%}"} for r in result["recompute"]],
             hide_index=True, width="stretch")
st.caption(_(
    "Per layer, the copied tokens whose keys and values deviate most are held recomputed (CacheBlend's idea); the rest "
    "stay links to the first occurrence. The ranking reads the deviation from the full cache (an oracle: CacheBlend "
    "estimates it from the tokens it recomputes in the layer before), so 100% is the full cache. The model decodes "
    "from a cache that really holds one copy: bytes are the tensors held (positions and links add "
    "{bytes} at 0%)."
).format(bytes=format_bytes(zero["index_bytes"])))
