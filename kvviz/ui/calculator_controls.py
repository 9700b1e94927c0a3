"""The memory calculator's controls: architectures (bundled, or a pasted config.json), context,
batch, cache dtypes, the policy what-ifs, the GPU and the weights. Settings persist across pages,
the scalar ones in the URL too."""

from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st

from kvviz.calculator import memory as calc
from kvviz.charts.calculator import context_label
from kvviz.ui.state import persisted
from kvviz.ui.token_html import md_escape

CONTEXTS = [2**k for k in range(8, 21)]  # 256 ... 1M tokens
PASTED = "pasted config"
NO_GPU = "none"
DEFAULT_ARCHS = ["llama-2-7b", "llama-3.1-8b", "llama-3.1-70b", "deepseek-v2"]
# "How many 32k-token requests fit on one H100 with Llama-3.1-70B, and what does KIVI-2 buy us?"
QUESTION = {
    "calc.archs": ["llama-3.1-70b"], "calc.dtypes": ["bf16", "kivi-2"], "calc.context": 32768, "calc.batch": 1,
    "calc.gpu": "h100", "calc.weights": "int4", "calc.keep": 100, "calc.window": 0,
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


def _ask_the_question() -> None:
    for key, value in QUESTION.items():
        st.session_state[key] = value


def _pasted_architecture(messages: list[str]):
    with st.expander("Paste a config.json (any Hugging Face model)", expanded=bool(st.session_state.get("calc.config_text"))):
        text = st.text_area(
            "config.json", key="calc.config_text", height=140, placeholder='{"num_hidden_layers": 32, "num_attention_heads": 32, ...}',
            help="The model's config.json from the Hugging Face hub. It is only parsed as JSON, never run.",
        )
    if not text.strip():
        return None
    try:
        return calc.architecture_from_json_text(text, name=PASTED, source="pasted config.json")
    except calc.CalcError as exc:
        messages.append(f"The pasted config cannot be used: {md_escape(str(exc))}")
        return None


def calculator_controls() -> CalcChoice:
    messages: list[str] = []
    st.button(
        "How many 32k-token requests fit on one H100 with Llama-3.1-70B, and what does KIVI-2 buy us?",
        icon=":material/help:", on_click=_ask_the_question, key="calc.question",
    )
    pasted = _pasted_architecture(messages)
    table = calc.bundled()
    options = list(table) + ([PASTED] if pasted else [])
    label = {name: a.display for name, a in table.items()} | {PASTED: PASTED}
    c_arch, c_dtype = st.columns([3, 2])
    names = persisted(
        c_arch.multiselect, "calc.archs", DEFAULT_ARCHS, label="Architectures", options=options,
        format_func=lambda n: label[n], help="Real configs from the Hugging Face hub (python -m kvviz calc --list), or the pasted one.",
    )
    names = [n for n in names if n in options]
    if pasted and PASTED not in names:
        names.append(PASTED)
    dtypes = persisted(
        c_dtype.multiselect, "calc.dtypes", ["bf16"], label="Cache dtypes", options=list(calc.CACHE_DTYPES),
        help="intN: packed codes plus a scale and zero point per group. kivi-N: KIVI's per-channel keys, per-token values and full-precision recent window.",
    )
    c_ctx, c_batch, c_keep, c_window = st.columns(4)
    context = persisted(c_ctx.select_slider, "calc.context", 4096, url="ctx", label="Context (tokens per sequence)", options=CONTEXTS, format_func=context_label)
    batch = persisted(c_batch.slider, "calc.batch", 1, url="batch", label="Batch (sequences)", min_value=1, max_value=256)
    keep = persisted(
        c_keep.slider, "calc.keep", 100, url="keep", label="A cache policy keeps (%)", min_value=5, max_value=100, step=5,
        help="What if an eviction policy (H2O, SnapKV, ...) keeps this share of the tokens: max(1, round(r × n)) per layer.",
    )
    window = persisted(
        c_window.number_input, "calc.window", 0, url="window", label="Sliding window (0 = off)", min_value=0, max_value=2**20, step=256,
        help="What if every layer keeps only the last W tokens (StreamingLLM-style window, without sinks).",
    )
    c_gpu, c_weights, c_util = st.columns(3)
    gpu = persisted(
        c_gpu.selectbox, "calc.gpu", "h100", url="gpu", label="GPU", options=[NO_GPU] + list(calc.GPUS),
        format_func=lambda g: "no GPU" if g == NO_GPU else calc.GPUS[g].display,
    )
    weights = persisted(c_weights.selectbox, "calc.weights", "bf16", url="weights", label="Weights", options=list(calc.WEIGHT_DTYPES),
                        help="int4: 4-bit codes plus an fp16 scale and zero point per 128 weights (GPTQ/AWQ-like).")
    util = persisted(c_util.slider, "calc.util", calc.DEFAULT_UTILIZATION, label="Usable share of GPU memory", min_value=0.5, max_value=1.0, step=0.05,
                     help="vLLM reserves 90% by default; the rest holds activations and the CUDA context.")
    with st.expander("Quantization details"):
        c_g, c_r, c_s = st.columns(3)
        group = c_g.selectbox("Group size G", [16, 32, 64, 128], index=1, key="calc.group", help="Elements sharing one scale and zero point.")
        residual = c_r.number_input("KIVI residual R (tokens)", 1, 4096, 128, key="calc.residual", help="KIVI's full-precision window and key group length; the paper uses 128.")
        scale_bytes = c_s.selectbox("Scale and residual bytes", [2, 4], key="calc.scale_bytes", help="2: fp16/bf16 (a GPU); 4: fp32 (kvviz on a CPU).")
    archs = [pasted if n == PASTED else table[n] for n in names]
    scenario = calc.Scenario(
        context=int(context), batch=int(batch), group_size=int(group), residual=int(residual), full_bytes=int(scale_bytes),
        keep_ratio=None if keep >= 100 else keep / 100, window=int(window) or None,
    )
    return CalcChoice(archs, list(dtypes), scenario, None if gpu == NO_GPU else gpu, weights, float(util), messages)
