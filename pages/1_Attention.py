"""Attention explorer: where the model looks, per layer and head, with and without a cache policy."""

import html

import numpy as np
import streamlit as st
import torch

from kvviz import attention_maps, capture
from kvviz.charts import attention_detail as detail_charts
from kvviz.charts import attention_overview as overview_charts
from kvviz.policies import PolicyError
from kvviz.spec import PolicySpec
from kvviz.text import PromptError, encode_prompt, token_texts
from kvviz.ui import attention_memo as memo
from kvviz.ui.policy_controls import policy_controls
from kvviz.ui.page import start_page

state = start_page(
    "Attention explorer",
    "🔍",
    "Where the model looks: every layer and head over the prompt and the tokens it generates. "
    "Attention is computed on demand from the layer's queries and keys, pooled into tiles for long "
    "prompts, so the whole context of the model stays fast to explore.",
    "Load a model in the sidebar to see its attention.",
)
ss = st.session_state
loaded = state.loaded
summary = loaded.summary

try:
    prompt_ids = encode_prompt(loaded.tokenizer, state.prompt, chat=state.chat, max_context=summary.max_context)
except PromptError as exc:
    st.info(f"{exc} The attention explorer needs a prompt that fits the model.")
    st.stop()

# ------------------------------------------------------------------------------ controls
c_new, c_pool, c_scale, c_res = st.columns(4)
room = max(0, min(64, summary.max_context - len(prompt_ids)))
new_tokens = c_new.number_input(
    "New tokens", 0, room, min(8, room), key="attn.new_tokens",
    help="Generate this many tokens greedily first; their attention is shown after the prompt's.",
)
pool = c_pool.radio(
    "Pooling", attention_maps.POOLS, horizontal=True, key="attn.pool",
    help="Long sequences are shown in tiles of several tokens: the largest weight in each tile (max), or the mean.",
)
scale = c_scale.radio(
    "Scale", ["log", "linear"], horizontal=True, key="attn.scale",
    help="Attention weights span orders of magnitude: a log scale (colours and bars) shows the faint ones too.",
)
max_cells = c_res.select_slider(
    "Detail resolution", [48, 64, 96, 128, 192], value=128, key="attn.cells",
    help="Tiles per side in the detail heatmap. A token window this small or smaller is shown token by token.",
)

with st.expander("Cache policy: grey out what a policy evicts", expanded=bool(ss.get("attn.use_policy"))):
    use_policy = st.toggle("Run a cache policy", key="attn.use_policy", help="Generate with the policy, then grey the keys it evicted.")
    choice = policy_controls(key="attn.policy", prompt_len=len(prompt_ids), url="policy") if use_policy else None
    if use_policy and choice is None:
        st.stop()

if choice is not None:
    new_tokens = max(1, int(new_tokens))

# ------------------------------------------------------------------------------ run
trace = None
try:
    if choice is not None or new_tokens > 0:
        spec = choice if choice is not None else PolicySpec.create("full")
        with st.spinner(f"Generating {new_tokens} tokens with the {spec.name} cache..."):
            trace = memo.generate(loaded, prompt_ids, int(new_tokens), spec)
except (PolicyError, PromptError, ValueError) as exc:
    st.error(f"The run could not start: {exc}")
    st.stop()

ids = trace.all_ids if trace is not None else prompt_ids
tokens = trace.tokens if trace is not None else token_texts(loaded.tokenizer, prompt_ids)
prompt_len = len(prompt_ids)
n = len(ids)
if n > 2048 and summary.device == "cpu":
    st.info(f"{n:,} tokens on the CPU: the first view of every layer takes a while (about a minute per 2,000 tokens). Later views reuse it.")

try:
    with st.spinner(f"Computing attention of {summary.n_layers} layers × {summary.n_q_heads} heads over {n:,} tokens..."):
        ov = memo.overview(loaded, ids, prompt_len, pool)
except (capture.CaptureError, torch.OutOfMemoryError) as exc:
    st.error(f"The attention of this model could not be computed: {exc}")
    st.stop()

# ------------------------------------------------------------------------------ selection state
L, H = ov.n_layers, ov.n_q_heads
group = H // ov.n_kv_heads
ss.setdefault("attn.layer", min(L - 1, L // 2))
ss.setdefault("attn.head", 0)
digest = memo.ids_digest(ids)
if ss.get("attn.sequence") != digest:  # a new sequence: select its last token, show all of it
    ss["attn.sequence"] = digest
    ss["attn.token"] = n - 1
    ss["attn.window"] = (0, n)


def _clicked(chart_key: str) -> list | None:
    """customdata of the point just clicked in a plotly chart, once per click."""
    event = ss.get(chart_key)
    points = (event or {}).get("selection", {}).get("points", [])
    marker = repr([p.get("customdata") for p in points])
    if not points or ss.get(chart_key + ".seen") == marker:
        return None
    ss[chart_key + ".seen"] = marker
    return points[0].get("customdata")


for chart_key in ("attn.overview_chart", "attn.profile_chart"):
    picked = _clicked(chart_key)
    if picked is not None and len(picked) == 2:
        ss["attn.layer"], ss["attn.head"] = int(picked[0]), int(picked[1])
picked = _clicked("attn.detail_chart")
if picked is not None and not isinstance(picked, list):
    ss["attn.token"] = min(n - 1, int(picked))

# ------------------------------------------------------------------------------ overview
st.subheader("Every layer and head")
st.caption(
    f"One small heatmap per head: queries down, keys across, {ov.tile} token{'s' if ov.tile > 1 else ''} per cell "
    f"({pool} of the tile). Rows are the {H} query heads, banded by the {ov.n_kv_heads} KV heads they share "
    f"({group} query heads read the same keys and values: grouped-query attention). Click a square to open it below."
)
st.plotly_chart(
    overview_charts.overview_figure(ov, selected=(ss["attn.layer"], ss["attn.head"]), scale=scale),
    key="attn.overview_chart", on_select="rerun", selection_mode="points", width="stretch",
)

# ------------------------------------------------------------------------------ detail
st.subheader("One head in detail")
c_layer, c_head, c_token, c_tok_text = st.columns([1, 1, 1, 2])
layer = c_layer.number_input("Layer", 0, L - 1, key="attn.layer")
head = c_head.number_input("Query head", 0, H - 1, key="attn.head", help=f"Heads {group}·k … {group}·k+{group - 1} share KV head k.")
token = c_token.number_input("Selected token", 0, n - 1, key="attn.token", help="Its row and column are outlined; click a bar under or beside the heatmap to pick one.")
with c_tok_text:
    st.html(
        f"<div style='padding-top: 1.9rem'>token <b>{token}</b>: <code>{html.escape(repr(tokens[token]))}</code>"
        + (" · generated" if token >= prompt_len else " · prompt")
        + "</div>"
    )


def _zoom(start: int, stop: int) -> None:
    ss["attn.window"] = (max(0, start), min(n, stop))


z1, z2, z3, z4 = st.columns([4, 1, 1, 1])
window = z1.slider("Token window (queries and keys)", 0, n, key="attn.window", help="Zoom: a window of at most the detail resolution is shown token by token.")
z2.button("Whole sequence", on_click=_zoom, args=(0, n), width="stretch")
z3.button("Around the token", on_click=_zoom, args=(int(token) + 1 - max_cells, int(token) + 1), width="stretch")
z4.button("Last tokens", on_click=_zoom, args=(n - max_cells, n), width="stretch")
q_range = (int(window[0]), max(int(window[1]), int(window[0]) + 1))

qk = memo.layer_qk(loaded, ids, int(layer), prompt_len, ov)
kv_head = qk.kv_head(int(head))

# the policy's evictions at a chosen step, for this layer and KV head
evicted = None
step = None
if trace is not None and choice is not None:
    step = st.slider(
        "Cache at step", 0, max(0, trace.n_steps - 1), value=max(0, trace.n_steps - 1), key="attn.step",
        help="Step 0 is the cache right after the prompt; step s after the s-th generated token entered it.",
    ) if trace.n_steps > 1 else 0
    exists = trace.entered_at_step() <= step
    evicted = exists & ~trace.kept_mask(step, int(layer), kv_head)

view = memo.view(
    loaded, ids, qk, int(head), q_range=q_range, k_range=q_range, max_cells=int(max_cells), pool=pool,
    evicted=evicted, prompt_len=prompt_len,
)
st.plotly_chart(
    detail_charts.detail_figure(view, tokens, selected_token=int(token), scale=scale),
    key="attn.detail_chart", on_select="rerun", selection_mode="points", width="stretch",
)

row = attention_maps.attention_rows(qk, int(head), [int(token)])[0]  # (seq,) what the selected token attends to
m1, m2, m3, m4 = st.columns(4)
m1.metric("Attention on the first 4 tokens", f"{row[:4].sum():.0%}", help="From the selected token's query.")
m2.metric("Entropy of its row", f"{view.row_entropy[token]:.2f} nats")
m3.metric("Attention it receives (H2O score)", f"{view.key_score[token]:.2f}", help="Summed over every query of the sequence.")
top = int(np.argmax(row))
m4.metric("It looks most at", f"#{top}", help=f"{tokens[top]!r} with weight {row[top]:.2f}")

if evicted is not None:
    rows = [prompt_len - 1 + s for s in range(trace.n_steps)]
    attn_rows = attention_maps.attention_rows(qk, int(head), rows)
    lost = np.array([
        attn_rows[s][(trace.entered_at_step() <= s) & ~trace.kept_mask(s, int(layer), kv_head)].sum()
        for s in range(trace.n_steps)
    ])
    e1, e2, e3 = st.columns([1, 1, 3])
    e1.metric(f"Evicted keys at step {step}", f"{int(evicted.sum()):,} of {int((trace.entered_at_step() <= step).sum()):,}",
              help=f"Layer {layer}, KV head {kv_head}.")
    e2.metric(
        "Attention on evicted keys", f"{lost[step]:.1%}",
        help="The attention the query of this step would put, with the full cache, on entries the policy no longer holds.",
    )
    e3.plotly_chart(detail_charts.lost_mass_figure(lost, step), width="stretch", key="attn.lost_chart")

st.caption(
    f"What token {token} attends to in this head (darker = more; hover a token for its weight), "
    "evicted keys struck through, generated tokens underlined."
)
with st.container(border=True):
    start = max(0, int(token) - 240)  # its recent context, and a little after it
    st.html(detail_charts.tokens_html(tokens, prompt_len=prompt_len, weights=row, selected=int(token), evicted=evicted, start=start, stop=int(token) + 40))

d1, d2 = st.columns([1, 3])
d1.download_button(
    "Download the matrix in view (CSV)", detail_charts.view_csv(view, tokens),
    file_name=f"attention_L{layer}_H{head}_{view.q_start}-{view.q_stop}.csv", mime="text/csv",
)
d2.caption("A PNG of any chart: the camera icon in the chart's toolbar.")

# ------------------------------------------------------------------------------ head profiles
st.subheader("Head profiles")
st.markdown(
    f"""Each head, measured over the queries after position {ov.profiles.from_query}:
**sink mass** is the attention on the first {ov.profiles.sink_tokens} tokens, **locality** the attention on the last
{ov.profiles.local_tokens} tokens, **entropy** how spread out each row is.

**Attention sinks.** Softmax makes every query spend all of its attention somewhere. Many heads, when
nothing in the context is relevant, park that attention on the very first tokens, whatever they say:
the *attention sink* (Xiao et al., 2023). Heads high on the x axis do this. A cache that drops those
first tokens changes where the mass goes and breaks the model, which is why StreamingLLM keeps a few
sink tokens beside its recent window, and why heavy-hitter policies (H2O) keep them naturally."""
)
p1, p2 = st.columns([3, 2])
with p1:
    color_by = st.radio("Colour points by", ["layer", "entropy"], horizontal=True, key="attn.profile_color")
    st.plotly_chart(
        overview_charts.profile_figure(ov.profiles, selected=(int(layer), int(head)), color_by=color_by),
        key="attn.profile_chart", on_select="rerun", selection_mode="points", width="stretch",
    )
with p2:
    st.dataframe(
        overview_charts.profiles_frame(ov.profiles), hide_index=True, height=470,
        column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("sink mass", "locality", "entropy (nats)", "entropy / max")}
        | {"mean distance": st.column_config.NumberColumn(format="%.1f")},
    )
