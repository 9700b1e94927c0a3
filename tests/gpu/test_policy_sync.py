"""On a CUDA device, policy bookkeeping never synchronizes with the host during decode: every
selector and store runs its decode steps under ``torch.cuda.set_sync_debug_mode("error")``,
which raises on any synchronizing call (``.item()``, ``.tolist()``, ``nonzero``, ...).

SmolLM2's shapes (9 query heads over 3 KV heads, head_dim 64), one layer, a 512-token prompt.
"""

import time

import pytest
import torch

from kvviz.runtime.policy_cache import PolicyCache
from kvviz.policies import build, registry, takes_budget

pytestmark = pytest.mark.gpu

KV, Q, D, PROMPT, STEPS = 3, 9, 64, 512, 6
SPECS = [n for n in registry()] + ["snapkv+quant", "h2o+kivi", "merge+quant", "tova+lowrank"]


def budget_for(spec):
    sel = build(spec).selector
    return 128 if sel is not None and sel.name != "full" and takes_budget(spec) else None  # retrievers: no budget


def run_steps(spec, device="cuda", dtype=torch.bfloat16, prompt=PROMPT, steps=STEPS, check=True, fixed=False):
    g = torch.Generator(device=device).manual_seed(0)
    cache = PolicyCache(build(spec, budget=budget_for(spec)), 1, prompt, prompt + steps, KV, torch.device(device), generator=g)
    layer = cache.layers[0]

    def forward(n, start):
        k = torch.randn(1, KV, n, D, device=device, dtype=dtype, generator=g)
        v = torch.randn(1, KV, n, D, device=device, dtype=dtype, generator=g)
        q = torch.randn(Q, n, D, device=device, dtype=dtype, generator=g)
        layer.step(k, v, torch.arange(start, start + n, device=device), q)

    forward(prompt, 0)  # prefill (lowrank's SVD may synchronize here, once per layer)
    if fixed:
        cache.hold_fixed(steps)
    torch.cuda.synchronize()
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error" if check else 0)
    t0 = time.perf_counter()
    try:
        for s in range(steps):
            forward(1, prompt + s)
    finally:
        torch.cuda.set_sync_debug_mode(mode)
    torch.cuda.synchronize()
    cache.decode_s = time.perf_counter() - t0
    return cache


@pytest.mark.parametrize("spec", SPECS)
def test_decode_steps_do_not_synchronize(spec):
    cache = run_steps(spec)
    held = len(cache.layers[0])
    assert held <= PROMPT + STEPS
    if spec in ("window", "h2o", "tova", "streaming_llm", "knorm", "lru", "lfu", "random", "merge", "merge+quant"):
        assert held == 128


@pytest.mark.parametrize("spec", ["full", "snapkv", "pyramidkv", "quant", "kivi", "lowrank", "head_share", "snapkv+quant", "snapkv+kivi"])
def test_fixed_capacity_steps_do_not_synchronize(spec):
    cache = run_steps(spec, fixed=True)
    assert cache.is_fixed and len(cache.layers[0]) == (128 if "snapkv" in spec or "pyramid" in spec else PROMPT) + STEPS


if __name__ == "__main__":  # a report: sync check, and the time of one decode step of one layer (2k prompt)
    print(torch.cuda.get_device_name())
    for spec in SPECS:
        try:
            run_steps(spec)
            status = "no sync"
        except RuntimeError as e:
            status = f"SYNC: {str(e).splitlines()[0][:80]}"
        run_steps(spec, prompt=2048, steps=3, check=False)  # warm up
        cache = run_steps(spec, prompt=2048, steps=64, check=False)
        per_step_us = cache.decode_s / 64 * 1e6
        print(f"{spec:16s} {status:10s} held {len(cache.layers[0]):5d}  {per_step_us:8.1f} us per layer step")
