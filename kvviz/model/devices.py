"""Where a model's parts live, for a model split across the GPUs of one host.

A model loaded with ``device_map="auto"`` (accelerate's big-model placement, which transformers
uses) holds its decoder layers on several devices; accelerate's hooks move each layer's inputs to
that layer's device. kvviz follows the placement: each layer's cache is made on the device where
the layer computes its keys, the prompt goes to the input embedding's device, and the Trace's
records are gathered from every device at the end of a run (``kvviz.runtime.policy_cache.PolicyCache``).

On one device (the CPU, one GPU) every lookup here gives that device, and a run is what it was
before models could be split.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch

from kvviz.i18n import N_, _
from kvviz.model.attention_inputs import decoder_attention

ACCELERATE_NEEDED = N_(
    "Splitting a model across GPUs (device_map auto) needs the accelerate package, which transformers"
    " uses to place layers on several devices: `pip install accelerate`."
)


def accelerate_available() -> bool:
    return importlib.util.find_spec("accelerate") is not None


def module_device(model, module: torch.nn.Module) -> torch.device:
    """The device on which ``module`` (a part of ``model``) computes: the device of its own
    parameters, or, where accelerate offloaded them (held on the meta device between calls), the
    execution device of the nearest hooked module around it."""
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    names = {id(m): name for name, m in model.named_modules()}
    name = names.get(id(module), "")
    best: tuple[int, torch.device] | None = None
    for other, m in model.named_modules():
        device = _hook_device(m)
        inside = other == "" or name == other or name.startswith(other + ".")
        if device is not None and inside and (best is None or len(other) > best[0]):
            best = (len(other), device)
    if best is None:
        raise ValueError(f"cannot tell where {type(module).__name__} computes: no parameters and no accelerate hook")
    return best[1]


def _hook_device(module) -> torch.device | None:
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if device is None:
        return None
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


def layer_devices(model) -> list[torch.device]:
    """The device of each decoder layer's attention, in layer order: where its keys and values
    are computed, and so where its cache lives."""
    attentions = decoder_attention(model)
    if any(attention is None for attention in attentions):
        raise ValueError(f"{type(model).__name__}: a decoder layer has no attention module under a name kvviz knows")
    return [module_device(model, attention) for attention in attentions if attention is not None]


def input_device(model) -> torch.device:
    """Where the token ids go: the input embedding's device."""
    return module_device(model, model.get_input_embeddings())


def run_devices(model) -> list[torch.device]:
    """Every device a run of ``model`` uses: the input embedding's, then each decoder layer's."""
    return [input_device(model), *layer_devices(model)]


def is_split(devices: Sequence[torch.device]) -> bool:
    return len(set(devices)) > 1


def layers_by_device(devices: Sequence[torch.device]) -> dict[torch.device, list[int]]:
    """{device: the indices of the layers on it}, devices in order of their first layer."""
    out: dict[torch.device, list[int]] = {}
    for i, device in enumerate(devices):
        out.setdefault(torch.device(device), []).append(i)
    return out


def describe(devices: Sequence[torch.device]) -> str:
    """The devices of a run's layers: "cuda:0", or "cuda:0 + cuda:1" for a split model."""
    return " + ".join(str(d) for d in layers_by_device(devices))


def weights_by_device(model) -> dict[str, int]:
    """Bytes of parameters and buffers held on each device (tied weights once; offloaded ones,
    on the meta device between calls, are left out)."""
    out: dict[str, int] = {}
    seen: set[int] = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type == "meta" or id(t) in seen:
            continue
        seen.add(id(t))
        out[str(t.device)] = out.get(str(t.device), 0) + t.numel() * t.element_size()
    return out


def allocated_by_device(devices: Sequence[torch.device]) -> dict[str, int]:
    """torch.cuda.memory_allocated of each CUDA device among ``devices`` (what torch holds there:
    weights, cache, activations); empty without CUDA."""
    out = {}
    for device in dict.fromkeys(torch.device(d) for d in devices):
        if device.type == "cuda":
            out[str(device)] = int(torch.cuda.memory_allocated(device))
    return out


def synchronize(devices: Sequence[torch.device]) -> None:
    """Wait for the work queued on every CUDA device among ``devices``."""
    for device in dict.fromkeys(torch.device(d) for d in devices):
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def synchronize_streams(devices: Sequence[torch.device]) -> None:
    """Wait for the work this thread queued on its current stream of every CUDA device among
    ``devices`` (work other threads queued on their streams goes on)."""
    for device in dict.fromkeys(torch.device(d) for d in devices):
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()


def dispatch(model, device_map: dict[str, int | str | torch.device]):
    """Place an in-memory model's modules on the devices of ``device_map`` ({module name: device},
    as transformers' device_map="auto" computes it) with accelerate's hooks, as ``from_pretrained``
    does for a checkpoint. For tests and benchmarks that build a model in the process."""
    if not accelerate_available():
        raise RuntimeError(_(ACCELERATE_NEEDED))
    from accelerate import dispatch_model

    skip = getattr(model, "_skip_keys_device_placement", None)  # the cache argument: never moved
    skip = [skip] if isinstance(skip, str) else list(skip or [])
    return dispatch_model(model, device_map=device_map, skip_keys=skip or None)
