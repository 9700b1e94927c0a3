"""A Llama with random weights, built in the process: the shape of a real model without its weights.

For tests and benchmarks of placement, memory and speed (a 7B-shaped model split across two GPUs)
on a host that reaches no hub: nothing is downloaded. The model knows nothing; its tokens are
meaningless, which it says wherever it is shown. Timings and bytes are those of the real shape.

The model is first built on the meta device (no memory), placed with accelerate's
``infer_auto_device_map`` (what transformers' ``device_map="auto"`` computes), then each module is
allocated on its device and filled there: weight matrices from N(0, initializer_range²) drawn with
a generator seeded per parameter, so the weights do not depend on the placement (a model split
over two GPUs holds what the same model on one GPU holds), norm weights 1, and RoPE's inverse
frequencies computed as the config says.
"""

from __future__ import annotations

from typing import cast

import torch

from kvviz.model import devices

RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS: a Llama built in the process from its config, with no weights downloaded; its tokens are "
    "meaningless, only its shape, memory and speed are real."
)


def llama_7b_config(kv_heads: int = 8, layers: int = 32, max_context: int = 4096):
    """Llama-2-7B's shape (hidden 4096, 32 layers, 32 query heads, MLP 11008, vocabulary 32,000),
    with ``kv_heads`` KV heads (32: Llama-2-7B's MHA; 8: GQA as in Llama-3-8B)."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=kv_heads, max_position_embeddings=max_context,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"  # what attn_implementation= sets (not a declared parameter of LlamaConfig)
    return config


def meta_llama(config, dtype: torch.dtype):
    """LlamaForCausalLM(config) on the meta device, in ``dtype``: its structure, no memory."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # transformers' PreTrainedModel.to is torch's, wrapped (functools.wraps): typed as torch's own
    return cast(torch.nn.Module, model).to(dtype).eval()


def auto_device_map(model, max_memory: dict | None = None) -> dict:
    """{module name: device} as transformers' ``device_map="auto"`` places a model: accelerate's
    balanced memory over the visible GPUs (or ``max_memory``), decoder layers never cut."""
    if not devices.accelerate_available():
        raise RuntimeError(devices.ACCELERATE_NEEDED)
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    dtype = next(model.parameters()).dtype
    balanced = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
    return infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split, dtype=dtype)


def materialize(model, device_map: dict, seed: int = 0):
    """Allocate every module of a meta model on its device of ``device_map`` and fill it (see the
    module's docstring); with more than one device, accelerate's hooks move each module's inputs
    to it, as ``from_pretrained`` does. Returns the model."""
    bad = sorted({str(d) for d in device_map.values() if not isinstance(d, int) and str(d).split(":")[0] not in ("cuda", "cpu")})
    if bad:
        raise ValueError(f"the device map puts modules on {', '.join(bad)}; a random model is built on GPUs or the CPU only")
    placed = {name: _device(d) for name, d in device_map.items()}
    for name, device in placed.items():
        (model.get_submodule(name) if name else model).to_empty(device=device)
    init_std = float(getattr(model.config, "initializer_range", 0.02))
    with torch.no_grad():
        for i, (_, p) in enumerate(model.named_parameters()):
            generator = torch.Generator(device=p.device).manual_seed(seed * 1_000_003 + i)
            if p.ndim >= 2:
                p.normal_(0.0, init_std, generator=generator)
            else:
                p.fill_(1.0)  # RMSNorm weights (Llama has no biases)
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=model.config).to(_place_of("model.rotary_emb", placed))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"not placed by the device map: {', '.join(left[:5])}")
    if len(set(placed.values())) > 1:
        devices.dispatch(model, {name: str(d) for name, d in placed.items()})
    return model


def random_llama(config, device_map: dict | str = "auto", dtype: torch.dtype = torch.bfloat16, seed: int = 0, max_memory: dict | None = None):
    """A random-weight LlamaForCausalLM of ``config``, placed by ``device_map`` ("auto": across the
    visible GPUs as transformers would, within ``max_memory``; or {module name: device})."""
    model = meta_llama(config, dtype)
    if isinstance(device_map, str):
        if device_map != "auto":
            raise ValueError(f'device_map must be "auto" or {{module name: device}}, not {device_map!r}')
        device_map = auto_device_map(model, max_memory)
    return materialize(model, device_map, seed)


def _device(d) -> torch.device:
    return torch.device("cuda", d) if isinstance(d, int) else torch.device(d)


def _place_of(name: str, placed: dict[str, torch.device]) -> torch.device:
    """The device of the longest entry of the map that holds module ``name``."""
    holders = [k for k in placed if k == "" or name == k or name.startswith(k + ".")]
    if holders:
        return placed[max(holders, key=len)]
    return placed.get("model.embed_tokens", next(iter(placed.values())))


class IdTokenizer:
    """Stands in for a tokenizer for a model with random weights: token i reads "<i>"."""

    eos_token_id = None

    def decode(self, ids, **kwargs) -> str:
        return "".join(f"<{int(i)}>" for i in ids)

    def batch_decode(self, batch, **kwargs) -> list[str]:
        return [self.decode(ids) for ids in batch]
