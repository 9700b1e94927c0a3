"""Memory calculator: the KV cache of real architectures from their configs, with what-ifs, how
many sequences fit on a GPU, and the figure checked against the loaded model's real cache."""

from dataclasses import replace

import pandas as pd
import streamlit as st

from kvviz.calculator import memory as calc
from kvviz.charts import calculator as charts
from kvviz.i18n import _
from kvviz.calculator.check import check_calculator
from kvviz.calculator.offload import offload_many
from kvviz.record.metrics import format_bytes
from kvviz.record.text import PromptError, encode_prompt
from kvviz.ui.a11y import chart
from kvviz.ui.calculator_controls import calculator_controls
from kvviz.ui.token_html import md_escape
from kvviz.ui.page import start_page

state = start_page(
    _("Memory calculator"),
    "🧮",
    _("How much memory the KV cache of a real model takes, from its config alone: per token, per sequence, "
      "per batch; with a quantized cache or a cache policy; and how many requests fit on a GPU next to the weights."),
    _("Load a model in the sidebar."),
)
ss = st.session_state
choice = calculator_controls()
for message in choice.messages:
    st.error(message, icon=":material/error:")
if not choice.archs or not choice.dtypes:
    st.info(_("Pick at least one architecture and one cache dtype."))
    st.stop()

fit = dict(gpu=choice.gpu, weights_dtype=choice.weights_dtype, utilization=choice.utilization)


def offload_section(offload) -> None:
    """The offload mode: the cache in host memory, a retrieval summary and the read set on the device."""
    found, problems = offload_many(choice.archs, choice.scenario, choice.dtypes, offload, **fit)
    for problem in problems:
        st.warning(md_escape(problem), icon=":material/warning:")
    if not found:
        st.stop()
    if choice.gpu:
        st.success(charts.offload_answer(found, choice.scenario.context), icon=":material/memory:")
    sparq = (" " + _("SparQ keeps no summary: each step it reads r components of every key, which live on the host, so they move too.")
             if offload.method == "sparq" else "")
    st.caption(_(
        "On the device: the method's summary of every entry (its own summary_bytes), a buffer for the read set and any layer that "
        "reads everything (Quest's first layers; a layer holding no more than the read set). On the host: every other entry. "
        "Each decode step moves the read set from the host (the newest entry is made on the device: one entry per layer and KV head "
        "over-counted).{sparq} Host memory is not bounded here; a step's moves may overlap the attention of earlier layers."
    ).format(sparq=sparq))
    chart(charts.offload_figure(found), key="calc.offload_chart", width="stretch")
    st.dataframe(pd.DataFrame(charts.offload_rows(found)), hide_index=True, width="stretch")
    with st.expander(_("The formulas behind each number"), expanded=False):
        for e in found:
            st.markdown(f"**{e.display} · {e.dtype}**")
            st.text(charts.formula_lines(e.formulas))


def device_section() -> None:
    estimates, problems = calc.estimate_many(choice.archs, choice.scenario, choice.dtypes, **fit)
    for problem in problems:
        st.warning(md_escape(problem), icon=":material/warning:")
    if not estimates:
        st.stop()

    # ------------------------------------------------------------------------------ the answer
    answer = calc.fit_answer(estimates)
    if answer:
        st.success(answer, icon=":material/memory:")
    for note in dict.fromkeys(n for e in estimates for n in e.notes):
        st.caption(md_escape(note))

    contexts = charts.context_axis(max(choice.scenario.context * 4, 32768))
    curves = [
        charts.Curve(e.display, e.dtype, contexts, calc.memory_curve(a, replace(choice.scenario, dtype=e.dtype), contexts))
        for a in choice.archs for e in estimates if e.arch == a.name
    ]
    rooms = {e.display: e.kv_budget_bytes for e in estimates} if choice.gpu else {}
    chart(
        charts.memory_figure(curves, rooms, choice.scenario.context, estimates[0].gpu, choice.scenario.batch),
        key="calc.chart", width="stretch",
    )
    st.dataframe(pd.DataFrame(charts.estimate_rows(estimates)), hide_index=True, width="stretch")
    with st.expander(_("The formulas behind each number"), expanded=False):
        for e in estimates:
            st.markdown(f"**{e.display} · {e.dtype}**")
            st.text(charts.formula_lines(e.formulas))


if choice.offload:
    offload_section(choice.offload)
else:
    device_section()

# ------------------------------------------------------------------------------ kinds of attention
st.subheader(_("MHA, GQA, MQA and MLA side by side"))
st.caption(_(
    "MHA caches a key and a value per query head; GQA shares each KV head among a group of query heads; "
    "MQA keeps a single KV head; MLA (DeepSeek-V2/V3) caches one compressed latent plus a small RoPE key per "
    "layer, from which every head's keys and values are rebuilt. bf16, per token, all layers."
))
kinds = []
columns = st.columns(len(calc.ATTENTION_EXAMPLES))
for column, (kind, name) in zip(columns, calc.ATTENTION_EXAMPLES.items()):
    arch = calc.get_architecture(name)
    est = calc.estimate(arch, calc.Scenario(context=1))
    mha = calc.mha_equivalent_bytes_per_token(arch.layout)
    kinds.append({"kind": kind, "model": arch.display, "bytes_per_token": est.bytes_per_token, "mha_bytes_per_token": mha})
    column.metric(f"{kind} · {arch.display}", format_bytes(est.bytes_per_token), _("{share} of MHA").format(share=f"{est.bytes_per_token / mha:.1%}"), delta_color="off", delta_arrow="off")
    column.caption(est.formulas["per_token"])
chart(charts.attention_kinds_figure(kinds), key="calc.kinds", width="stretch")

# ------------------------------------------------------------------------------ checked against the real cache
st.subheader(_("Checked against the real cache"))
loaded = state.loaded
st.caption(_(
    "The calculator reads only {model}'s config; a short full-cache run of the model on the sidebar's "
    "prompt (its first 256 tokens, 4 new tokens) measures the bytes its cache really held at every step."
).format(model=md_escape(loaded.summary.name)))
if st.button(_("Run the model and compare"), key="calc.check", icon=":material/play_arrow:"):
    try:
        ids = encode_prompt(loaded.tokenizer, state.prompt, chat=state.chat)
        with st.spinner(_("Running the full cache...")):
            ss["calc.check_result"] = check_calculator(loaded.model, loaded.tokenizer, ids, name=loaded.summary.name)
    except (PromptError, calc.CalcError, ValueError) as exc:
        st.error(_("The check could not run: {error}").format(error=md_escape(str(exc))))
result = ss.get("calc.check_result")
if result is not None:
    st.text(result.per_token_formula)
    localized = st.column_config.NumberColumn(format="localized")
    shown = charts.check_columns()  # the rows' fields as column headers, in the page's language
    st.dataframe(pd.DataFrame(result.rows).rename(columns=shown), hide_index=True,
                 column_config={shown["measured bytes"]: localized, shown["calculated bytes"]: localized})
    if result.agree:
        st.success(_("The calculator and the real cache agree to the byte at all {n} steps ({dtype}).").format(n=len(result.rows), dtype=result.dtype))
    else:
        st.error(_("The calculator and the real cache disagree: see the rows above."))
