"""One paged run, as the page and the CLI start it: prompts in, a ``PagedRun`` out."""

from __future__ import annotations

import dataclasses
import os
import time

import torch

from kvviz.i18n import _
from kvviz.model import devices
from kvviz.paged.block_manager import PoolTooSmall
from kvviz.paged.result import PagedRun
from kvviz.paged.engine import PagedEngine
from kvviz.paged.scheduler import Request
from kvviz.policies.spec import PolicySpec
from kvviz.record.text import PromptError, encode_prompt


# (least, most, default) of each number the page's custom form offers; charts must stay fast at
# the most (benchmarks/widget_maxima.py builds them there)
FORM_LIMITS = {
    "block_size": (1, 64, 4),
    "num_blocks": (1, 4096, 32),
    "n": (1, 8, 1),
    "max_new_tokens": (1, 128, 12),
    "seed": (0, 10_000, 0),
}


@dataclasses.dataclass(frozen=True)
class PagedSettings:
    block_size: int = 16
    num_blocks: int = 64
    n: int = 1  # parallel samples per prompt
    max_new_tokens: int = 16
    sample: bool = False
    seed: int = 0
    chat: bool = False
    policy: PolicySpec | None = None  # an eviction policy (with a budget); None: the full cache
    eviction: str = "token"  # or "block"
    prefix_caching: bool = True
    memory_budget_bytes: int | None = None  # for "fits in budget"; default: the pool's size

    def validate(self) -> None:
        if self.block_size < 1:
            raise PoolTooSmall(_("block size must be at least 1, not {n}.").format(n=self.block_size))
        if self.num_blocks < 1:
            raise PoolTooSmall(_("the pool needs at least one block, not {n}.").format(n=self.num_blocks))
        if self.n < 1:
            raise ValueError(_("n (samples per prompt) must be at least 1, not {n}.").format(n=self.n))
        if self.max_new_tokens < 1:
            raise ValueError(_("max_new_tokens must be at least 1, not {n}.").format(n=self.max_new_tokens))


MAX_PROMPTS = 64  # each request is a row of the block tables and a colour of the pool: more cannot be read
POOL_SHARE = 0.5  # the pool may take at most this share of the memory free on its device


def encode_all(tokenizer, prompts: list[str], chat: bool, max_context: int | None) -> list[list[int]]:
    prompts = [p for p in prompts if p and p.strip()]
    if not prompts:
        raise PromptError(_("No prompt given: write at least one."))
    if len(prompts) > MAX_PROMPTS:
        raise PromptError(_("{n} prompts: the paged cache takes at most {most} (one per line).").format(n=len(prompts), most=MAX_PROMPTS))
    return [encode_prompt(tokenizer, p, chat=chat, max_context=max_context) for p in prompts]


def bytes_per_token(model) -> int:
    c = model.config
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * kv_heads * head_dim * model.dtype.itemsize


def free_bytes(device: torch.device) -> int:
    """Memory free on ``device`` now: the GPU's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX host: no check
        return 2**63


def check_pool_fits(model, settings: PagedSettings) -> None:
    """Refuse a pool larger than ``POOL_SHARE`` of the memory free on the model's device, before it
    is allocated (4,096 blocks of 64 slots of SmolLM2 in float32 are 11.25 GiB)."""
    from kvviz.record.metrics import format_bytes

    need = settings.num_blocks * settings.block_size * bytes_per_token(model)
    room = int(POOL_SHARE * free_bytes(devices.input_device(model)))
    if need > room:
        raise PoolTooSmall(_(
            "A pool of {blocks} blocks of {size} slots holds {need} of KV, more than "
            "half of the {free} free on this device: choose fewer or smaller blocks."
        ).format(blocks=f"{settings.num_blocks:,}", size=settings.block_size, need=format_bytes(need), free=format_bytes(2 * room)))


def run_paged(model, tokenizer, prompts: list[str], settings: PagedSettings, model_name: str = "") -> PagedRun:
    """Decode every prompt (``n`` samples each) through one paged pool; raises PoolTooSmall,
    PromptError or PolicyError with a message for bad input."""
    settings.validate()
    check_pool_fits(model, settings)
    if devices.is_split(devices.layer_devices(model)):
        raise ValueError(_(
            "The paged cache keeps one block pool for every layer on one device, so it does not run on a model"
            " split across GPUs: load the model on one device (without device map auto)."
        ))
    max_context = getattr(model.config, "max_position_embeddings", None) or 0
    ids = encode_all(tokenizer, prompts, settings.chat, max_context or None)
    pipeline = settings.policy.pipeline() if settings.policy is not None else None
    t0 = time.perf_counter()
    s = PagedEngine(
        model, tokenizer, settings.num_blocks, settings.block_size, pipeline=pipeline, eviction=settings.eviction,
        prefix_caching=settings.prefix_caching, sample=settings.sample,
    )
    for i, prompt_ids in enumerate(ids):
        s.submit(Request(f"r{i}", prompt_ids, settings.max_new_tokens, seed=settings.seed + 1000 * i, n=settings.n))
    s.run()
    elapsed = time.perf_counter() - t0
    bpt = bytes_per_token(model)
    index = {f"r{i}": i for i in range(len(ids))}
    requests = [
        {
            "id": r.rid,
            "prompt_index": index[r.rid.split(".")[0]],
            "sample_index": int(r.rid.split(".")[1]) if "." in r.rid else 0,
            "prompt_tokens": len(r.prompt_ids),
            "prompt_token_ids": r.prompt_ids,
            "generated_token_ids": r.generated,
            "generated_text": tokenizer.decode(r.generated, skip_special_tokens=True),
            "block_table": r.block_table,
            "prefix_hit_blocks": r.prefix_hit_blocks,
            "preemptions": r.preemptions,
        }
        for r in s.requests
    ]
    requests.sort(key=lambda r: (r["prompt_index"], r["sample_index"]))
    run = PagedRun(
        model=model_name or type(model).__name__,
        device=str(s.device),
        policy=str(settings.policy) if settings.policy is not None else "full",
        eviction=settings.eviction,
        block_size=settings.block_size,
        num_blocks=settings.num_blocks,
        bytes_per_token=bpt,
        max_context=max_context or max(len(r.tokens) for r in s.requests),
        max_new_tokens=settings.max_new_tokens,
        requests=requests,
        frames=[plain_frame(f) for f in s.frames],
        peak_blocks_used=s.manager.peak_used,
        waste={},
        elapsed_s=elapsed,
    )
    run.waste = run.waste_for(settings.memory_budget_bytes or run.pool_bytes)
    return run


def plain_frame(frame: dict) -> dict:
    """A scheduler frame with its events as dicts and live shares rounded (JSON-ready). Equal rows
    of ``live`` are one list (a pool of 4,096 blocks of 64 over a hundred steps would otherwise
    keep tens of millions of floats)."""
    rows: dict[tuple, list[float]] = {}
    live = [rows.setdefault(key, list(key)) for key in (tuple(round(x, 3) for x in row) for row in frame["live"])]
    return frame | {
        "events": [e.to_dict() for e in frame["events"]],
        "live": live,
        "held_tokens": round(frame["held_tokens"], 3),
    }
