"""Tradeoffs: sweep policies over memory budgets and see what each costs in quality."""

import streamlit as st

from kvviz.charts import sweep as charts
from kvviz.record.metrics import format_bytes
from kvviz.sweep.rows import rows_csv, rows_frame
from kvviz.ui.a11y import bring_into_view, chart
from kvviz.ui import stale
from kvviz.ui import sweep as ui
from kvviz.ui.model_resource import model_key
from kvviz.ui.page import start_page
from kvviz.ui.state import persisted
from kvviz.ui.token_html import md_escape
from kvviz.i18n import _

state = start_page(
    _("Tradeoffs"),
    "⚖️",
    _("Run several policies over several memory budgets on the same text and compare what each one "
      "costs: perplexity, divergence from the full cache, and whether a hidden pass key survives."),
    _("Load a model in the sidebar to run a sweep."),
)
loaded = state.loaded
device = loaded.summary.device
key = model_key(state.model_spec, state.device, state.dtype)

ui.preset_buttons(device)
settings = ui.controls(device, state.prompt)
if settings is None:
    st.stop()
ui.preset_story(settings, device)
result = ui.run_panel(loaded, settings, key)
if result is None:
    st.info(_(
        "Press **Run** to sweep. Perplexity: the first *context* tokens are the prompt, the policy compresses "
        "them right after the prefill, and the next *continuation* tokens are forced one by one while it holds "
        "its budget; KL and top-1 compare each step with the full cache on the same tokens. Passkey: a key "
        "hidden in filler at each depth, asked for through the chat template, answered greedily."
    ))
    st.stop()

# ------------------------------------------------------------------------------ the result
rows = [r.to_dict() for r in result.rows]
task = result.settings.task
st.divider()
bring_into_view("result", id(result))  # after Run, the result is in view
stale.warn(ui.changed_settings(result.settings, settings))
if result.stopped:
    st.warning(_("Stopped: showing the {n} runs that finished before the stop.").format(n=len(rows)))
ref = result.reference
m = st.columns(4)
m[0].metric(_("Runs"), len(rows) + (ref is not None), help=_("{s} s in all on {device} ({dtype})").format(
    s=f"{result.seconds:.1f}", device=result.device, dtype=result.dtype))
m[1].metric(_("Time"), _("{n} s").format(n=f"{result.seconds:.0f}"))
if ref:
    m[2].metric(_("Full cache perplexity"), f"{ref['ppl']:.2f}", help=_("{forced} forced tokens after {context} prompt tokens").format(
        forced=ref["continuation"], context=ref["context"]))
    m[3].metric(_("Full cache at the end"), format_bytes(ref["kv_bytes_full"]))

chosen, chart_key, table_key, draw_choice = ui.chosen_rows(len(rows), id(result))
if task == "ppl" and rows:
    c_metric, c_memory, c_limit = st.columns([3, 2, 2])
    metric = persisted(
        c_metric.radio, "tradeoffs.metric", "ppl", url="metric", label=_("Quality"), options=list(charts.METRICS),
        format_func=lambda k: _(charts.METRICS[k][0]), horizontal=True,
    )
    memory = persisted(
        c_memory.radio, "tradeoffs.memory", "pct", url="memory", label=_("Memory axis"), options=["pct", "bytes"],
        format_func={"pct": _("% of the full cache"), "bytes": _("bytes")}.get, horizontal=True,
    )
    limit = persisted(
        c_limit.number_input, "tradeoffs.limit", 25, url="limit", label=_("Memory limit (% of the full cache)"),
        min_value=1, max_value=100, step=5, help=_("Which policy is best within this much memory?"),
    )
    chart(
        charts.pareto_figure(rows, metric, memory, ref, selected=chosen if draw_choice else None), width="stretch", key=chart_key,
        on_select="rerun", selection_mode=("points", "box", "lasso"),
    )
    ui.open_runs(rows, chosen, result.settings, loaded.tokenizer)
    best = charts.best_within(rows, limit, metric)
    if best is None:
        st.warning(_("No policy in this sweep holds {limit}% of the full cache or less.").format(limit=limit))
    else:
        st.success(md_escape(charts.describe_best(best, metric, ref, limit)), icon=":material/check_circle:")
    st.caption(_(
        "KV held is measured at the last step, from the tensors the cache really holds (quantization scales and "
        "zero points included). SnapKV compresses the prompt only and keeps every continuation token, as in the "
        "paper; its peak is in the table."
    ))
elif rows:
    chart(charts.passkey_figure(rows), width="stretch", key="tradeoffs.passkey")
    found = sum(bool(r["found"]) for r in rows)
    st.caption(_("{found} of {n} answers hold the pass key's digits. Hover a cell for the model's answer.").format(found=found, n=len(rows)))
    ui.open_runs(rows, chosen, result.settings, loaded.tokenizer)

st.subheader(_("Table"))
table = rows_frame(rows, task)
table.insert(0, "chosen", [i in chosen for i in range(len(rows))])  # what the chart shows chosen, whichever chose it
st.dataframe(
    table, hide_index=True, width="stretch", column_config=ui.column_config(), key=table_key, on_select="rerun", selection_mode="multi-row",
)
d_csv, d_html = st.columns(2)
d_csv.download_button(
    _("Download the table (CSV)"), data=rows_csv(rows, task), file_name=f"kvviz-sweep-{task}.csv", mime="text/csv", key="tradeoffs.csv", on_click="ignore",
)
result_dict = result.to_dict()
d_html.download_button(
    _("Download the report (HTML)"), data=lambda: charts.sweep_report(result_dict).to_html(), file_name=f"kvviz-sweep-{task}.html",
    mime="text/html", key="tradeoffs.html", on_click="ignore", help=_("Charts, table and settings in one file that opens without a server."),
)
