"""The memory calculator's controls: architectures (bundled, or a pasted config.json), context,
batch, cache dtypes, the policy what-ifs, the GPU and the weights. Settings persist across pages,
and every one of them lives in the URL (``calculator_link``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import streamlit as st

from kvviz.calculator import memory as calc
from kvviz.calculator.offload import DEFAULT_LINK_GBPS, MAX_LINK_GBPS, METHOD_PARAMS, METHODS, Offload
from kvviz.charts.calculator import context_label
from kvviz.i18n import N_, _
from kvviz.ui.calculator_link import CONFIG_URL_MAX, LinkSetting, choice, choices, compact_config, config_text, listed, number, read_link, write_link
from kvviz.ui.state import persisted
from kvviz.ui.token_html import md_escape

CONTEXTS = [2**k for k in range(8, 21)]  # 256 ... 1M tokens
PASTED = "pasted config"
NO_GPU = "none"
DEFAULT_ARCHS = ["llama-2-7b", "llama-3.1-8b", "llama-3.1-70b", "deepseek-v2"]
GROUPS, SCALE_BYTES = [16, 32, 64, 128], [2, 4]
MODES = {"device": N_("Cache on the device"), "offload": N_("Offloaded with a retrieval summary")}
# "How many 32k-token requests fit on one H100 with Llama-3.1-70B, and what does KIVI-2 buy us?"
QUESTION = {
    "calc.archs": ["llama-3.1-70b"], "calc.dtypes": ["bf16", "kivi-2"], "calc.context": 32768, "calc.batch": 1,
    "calc.gpu": "h100", "calc.weights": "int4", "calc.keep": 100, "calc.window": 0,
}


def _gpu_name(g: str) -> str:
    return _("no GPU") if g == NO_GPU else calc.GPUS[g].display


def _arch_names(names) -> str:
    return listed([calc.bundled()[n].display for n in names if n in calc.bundled()])


# every choice of the page: query parameter, session key, default, how the URL's text is read
LINK = [
    LinkSetting("archs", "calc.archs", DEFAULT_ARCHS, choices(list(calc.bundled()), ignore=(PASTED,), what=N_("a bundled architecture (python -m kvviz calc --list)")), _arch_names),
    LinkSetting("dtypes", "calc.dtypes", ["bf16"], choices(list(calc.CACHE_DTYPES)), listed),
    LinkSetting("ctx", "calc.context", 4096, choice(CONTEXTS, int), lambda n: _("{n} tokens").format(n=context_label(n))),
    LinkSetting("batch", "calc.batch", 1, number(1, 256, 1)),
    LinkSetting("keep", "calc.keep", 100, number(5, 100, 5), lambda k: f"{k}%"),
    LinkSetting("window", "calc.window", 0, number(0, 2**20, 1), lambda w: f"{w:,}" if w else _("no window")),
    LinkSetting("gpu", "calc.gpu", "h100", choice([NO_GPU] + list(calc.GPUS)), _gpu_name),
    LinkSetting("weights", "calc.weights", "bf16", choice(list(calc.WEIGHT_DTYPES))),
    LinkSetting("util", "calc.util", calc.DEFAULT_UTILIZATION, number(0.5, 1.0, 0.05, float), lambda u: f"{u:.0%}"),
    LinkSetting("group", "calc.group", 32, choice(GROUPS, int)),
    LinkSetting("residual", "calc.residual", 128, number(1, 4096, 1), lambda r: _("{n} tokens").format(n=r)),
    LinkSetting("scalebytes", "calc.scale_bytes", 2, choice(SCALE_BYTES, int), lambda b: _("{n} bytes").format(n=b)),
    LinkSetting("config", "calc.config", "", config_text, lambda t: _("no pasted config") if not t else _("the pasted config")),
    LinkSetting("mode", "calc.mode", "device", choice(list(MODES)), lambda m: _(MODES[m])),
    LinkSetting("method", "calc.method", "quest", choice(list(METHODS))),
    LinkSetting("readbudget", "calc.read_budget", 2048, number(1, 1_000_000, 1), lambda k: _("{n} entries").format(n=f"{k:,}")),
    LinkSetting("pagesize", "calc.page_size", 16, number(1, 4096, 1)),
    LinkSetting("fulllayers", "calc.full_layers", 2, number(0, 1000, 1)),
    LinkSetting("bits", "calc.bits", 8, number(1, 64, 1)),
    LinkSetting("tables", "calc.tables", 4, number(1, 64, 1)),
    LinkSetting("r", "calc.r", 16, number(1, 4096, 1)),
    LinkSetting("link", "calc.link_gbps", DEFAULT_LINK_GBPS, number(1, MAX_LINK_GBPS, 1, float), lambda g: f"{g:g} GB/s"),
]
# the offload widgets: (url, session key, label, help), shown for the methods that take them
OFFLOAD_PARAMS = {
    "page_size": ("pagesize", "calc.page_size", N_("Page size (entries)"), N_("Quest: entries per page; each page keeps the min and max of its keys.")),
    "full_layers": ("fulllayers", "calc.full_layers", N_("Layers read whole"),
                    N_("Quest: the first layers read every entry (the paper's 2): they stay on the device.")),
    "bits": ("bits", "calc.bits", N_("Signature bits"), N_("SimHash: signature bits per key in each table.")),
    "tables": ("tables", "calc.tables", N_("Hash tables"), N_("SimHash: independent sets of hyperplanes.")),
    "r": ("r", "calc.r", N_("Query components r"), N_("SparQ: components of the query, and of every key, read each step.")),
}


@dataclass
class CalcChoice:
    archs: list  # Architecture
    dtypes: list[str]
    scenario: calc.Scenario
    gpu: str | None
    weights_dtype: str
    utilization: float
    messages: list[str] = field(default_factory=list)  # escaped, for st.error
    offload: Offload | None = None  # the offload mode's settings; None: the cache on the device


def _ask_the_question() -> None:
    for key, value in QUESTION.items():
        st.session_state[key] = value


def _pasted_architecture(messages: list[str]):
    """(the pasted config's Architecture or None, its text)."""
    with st.expander(_("Paste a config.json (any Hugging Face model)"), expanded=bool(st.session_state.get("calc.config"))) as box:
        text = persisted(
            st.text_area, "calc.config", "", widget_key="calc.config_text", label="config.json", height=140,
            placeholder='{"num_hidden_layers": 32, "num_attention_heads": 32, ...}',
            help=_("The model's config.json from the Hugging Face hub. It is only parsed as JSON, never run."),
        )
    if not text.strip():
        return None, text
    try:
        arch = calc.architecture_from_json_text(text, name=PASTED, source="pasted config.json")
    except calc.CalcError as exc:
        messages.append(_("The pasted config cannot be used: {error}").format(error=md_escape(str(exc))))
        return None, text
    if compact_config(text) is None:
        box.caption(_("This config is too long for a link (links carry up to {n} characters of it): a copied link leaves it out.").format(
            n=f"{CONFIG_URL_MAX:,}"))
    return replace(arch, display=_("pasted config")), text


def calculator_controls() -> CalcChoice:
    messages: list[str] = []
    read_link(LINK)
    st.button(
        _("How many 32k-token requests fit on one H100 with Llama-3.1-70B, and what does KIVI-2 buy us?"),
        icon=":material/help:", on_click=_ask_the_question, key="calc.question",
    )
    pasted, pasted_text = _pasted_architecture(messages)
    table = calc.bundled()
    options = list(table) + ([PASTED] if pasted else [])
    label = {name: a.display for name, a in table.items()} | {PASTED: _("pasted config")}
    c_arch, c_dtype = st.columns([3, 2])
    names = persisted(
        c_arch.multiselect, "calc.archs", DEFAULT_ARCHS, label=_("Architectures"), options=options,
        format_func=lambda n: label[n], help=_("Real configs from the Hugging Face hub (python -m kvviz calc --list), or the pasted one."),
    )
    names = [n for n in names if n in options]
    if pasted and PASTED not in names:
        names.append(PASTED)
    dtypes = persisted(
        c_dtype.multiselect, "calc.dtypes", ["bf16"], label=_("Cache dtypes"), options=list(calc.CACHE_DTYPES),
        help=_("intN: packed codes plus a scale and zero point per group. kivi-N: KIVI's per-channel keys, per-token values and "
               "full-precision recent window."),
    )
    c_ctx, c_batch, c_keep, c_window = st.columns(4)
    context = persisted(c_ctx.select_slider, "calc.context", 4096, label=_("Context (tokens per sequence)"), options=CONTEXTS, format_func=context_label)
    batch = persisted(c_batch.slider, "calc.batch", 1, label=_("Batch (sequences)"), min_value=1, max_value=256)
    keep = persisted(
        c_keep.slider, "calc.keep", 100, label=_("A cache policy keeps (%)"), min_value=5, max_value=100, step=5,
        help=_("What if an eviction policy (H2O, SnapKV, ...) keeps this share of the tokens: max(1, round(r × n)) per layer."),
    )
    window = persisted(
        c_window.number_input, "calc.window", 0, label=_("Sliding window (0 = off)"), min_value=0, max_value=2**20, step=256,
        help=_("What if every layer keeps only the last W tokens (StreamingLLM-style window, without sinks)."),
    )
    c_gpu, c_weights, c_util = st.columns(3)
    gpus = {g: _gpu_name(g) for g in [NO_GPU] + list(calc.GPUS)}  # shown names, translated now (not when a test re-reads the widget)
    gpu = persisted(c_gpu.selectbox, "calc.gpu", "h100", label=_("GPU"), options=list(gpus), format_func=gpus.get)
    weights = persisted(c_weights.selectbox, "calc.weights", "bf16", label=_("Weights"), options=list(calc.WEIGHT_DTYPES),
                        help=_("int4: 4-bit codes plus an fp16 scale and zero point per 128 weights (GPTQ/AWQ-like)."))
    util = persisted(c_util.slider, "calc.util", calc.DEFAULT_UTILIZATION, label=_("Usable share of GPU memory"), min_value=0.5, max_value=1.0,
                     step=0.05, help=_("vLLM reserves 90% by default; the rest holds activations and the CUDA context."))
    with st.expander(_("Quantization details")):
        c_g, c_r, c_s = st.columns(3)
        group = persisted(c_g.selectbox, "calc.group", 32, label=_("Group size G"), options=GROUPS, help=_("Elements sharing one scale and zero point."))
        residual = persisted(c_r.number_input, "calc.residual", 128, label=_("KIVI residual R (tokens)"), min_value=1, max_value=4096,
                             help=_("KIVI's full-precision window and key group length; the paper uses 128."))
        scale_bytes = persisted(c_s.selectbox, "calc.scale_bytes", 2, label=_("Scale and residual bytes"), options=SCALE_BYTES,
                                help=_("2: fp16/bf16 (a GPU); 4: fp32 (kvviz on a CPU)."))
    offload = _offload_controls()
    ss = st.session_state
    write_link(LINK, {
        "mode": "offload" if offload else "device", "method": ss.get("calc.method", "quest"),
        "readbudget": ss.get("calc.read_budget", 2048), "link": ss.get("calc.link_gbps", DEFAULT_LINK_GBPS),
        **{url: ss.get(key, default) for url, key, default in _offload_link_values()},
        "archs": [n for n in names if n != PASTED], "dtypes": list(dtypes), "ctx": context, "batch": batch, "keep": keep,
        "window": window, "gpu": gpu, "weights": weights, "util": util, "group": group, "residual": residual,
        "scalebytes": scale_bytes, "config": compact_config(pasted_text) if pasted_text.strip() else None,
    })
    archs = [pasted if n == PASTED else table[n] for n in names]
    scenario = calc.Scenario(
        context=int(context), batch=int(batch), group_size=int(group), residual=int(residual), full_bytes=int(scale_bytes),
        keep_ratio=None if keep >= 100 else keep / 100, window=int(window) or None,
    )
    return CalcChoice(archs, list(dtypes), scenario, None if gpu == NO_GPU else gpu, weights, float(util), messages, offload)


def _offload_link_values():
    defaults = {s.url: s.default for s in LINK}
    return [(url, key, defaults[url]) for url, key, _label, _help in OFFLOAD_PARAMS.values()]


def _offload_controls() -> Offload | None:
    """The mode switch and, in the offload mode, its method, read budget, parameters and link."""
    modes = {m: _(label) for m, label in MODES.items()}
    mode = persisted(
        st.radio, "calc.mode", "device", label=_("Where the cache lives"), options=list(modes), format_func=modes.get, horizontal=True,
        help=_("Offloaded: every entry in host (CPU) memory; on the device a retrieval method's summary of every entry "
               "and the read set of each decode step, moved from the host each step."),
    )
    if mode != "offload":
        return None
    c_method, c_budget, c_link = st.columns(3)
    methods = {m: _(label) for m, label in METHODS.items()}
    method = persisted(c_method.selectbox, "calc.method", "quest", label=_("Retrieval method"), options=list(methods), format_func=methods.get)
    budget = persisted(c_budget.number_input, "calc.read_budget", 2048, label=_("Read budget (entries per layer and KV head)"),
                       min_value=1, max_value=1_000_000, step=256, help=_("Entries each decode step reads, and moves from the host."))
    link = persisted(c_link.number_input, "calc.link_gbps", DEFAULT_LINK_GBPS, label=_("Host link (GB/s per direction)"),
                     min_value=1.0, max_value=MAX_LINK_GBPS, step=1.0,
                     help=_("Assumed 64: PCIe 5.0 x16 (32 GT/s × 16 lanes). PCIe 4.0 x16: about 32; NVLink-C2C (Grace Hopper): about 450."))
    names = METHOD_PARAMS[method]
    values = {}
    for column, name in zip(st.columns(max(len(names), 2)), names):
        _url, key, label, help_text = OFFLOAD_PARAMS[name]
        default = next(s.default for s in LINK if s.key == key)
        lo, hi = (0, 1000) if name == "full_layers" else (1, 64 if name in ("bits", "tables") else 4096)
        values[name] = int(persisted(column.number_input, key, default, label=_(label), min_value=lo, max_value=hi, step=1, help=_(help_text)))
    return Offload(method=method, read_budget=int(budget), params=values, link_gbps=float(link))
