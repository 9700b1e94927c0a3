"""A policy's steady decode steps compiled by torch.compile (``kvviz.runtime.fused_steps``), on the
CPU in float32 (inductor's C++ backend; on CUDA, Triton kernels replayed in a graph, see
``tests/gpu/test_fused_steps_cuda.py``): the fused run gives the policy's own eager results (tokens,
log-probs, evictions, scores, read sets, the lost attention mass), one compiled graph serves every
layer of a kind and every later run, a run never waits for the compiler, and a policy torch cannot
trace decodes as before and says so."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kvviz.runtime import engine, fused, fused_steps
from kvviz.storage.fixed_capacity import get_path

NEW = 20


class Tok:
    eos_token_id = None

    def decode(self, ids, **kw):
        return " ".join(map(str, ids))


@pytest.fixture(scope="module")
def model():
    """A random Llama of 4 layers (GQA: 4 query heads over 2 KV heads), float32 on the CPU."""
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, max_position_embeddings=512, attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


IDS = torch.Generator().manual_seed(1)
PROMPT = torch.randint(0, 128, (64,), generator=IDS).tolist()


def run(model, spec, use_fused, **kw):
    # a growing cache is held at a fixed capacity (as on CUDA, where graphs need it): its steps repeat
    kw.setdefault("fixed_capacity", True)
    return engine.run(model, Tok(), PROMPT, spec, max_new_tokens=NEW, stop_at_eos=False, cuda_graphs=False,
                      keep_logprobs=True, capture_queries=True, fused=use_fused, **kw)


def fused_run(model, spec, **kw):
    """The first fused run asks for the build (decoding unfused meanwhile); the second uses it."""
    first = run(model, spec, True, **kw)
    fused.wait()
    return first, run(model, spec, True, **kw)


def assert_same(fast, plain, ties: bool = False):
    """The same run; with ``ties``, evictions may differ only between entries whose scores are
    equal to float32 rounding (a reduction summed in another order ranks a near-tie the other way)."""
    assert fast.generated_ids == plain.generated_ids
    if ties:
        for layer, head in {(int(l), int(h)) for l, h, _ in np.argwhere(fast.evicted_at_step != plain.evicted_at_step)}:
            swapped = plain.scores[layer, head][fast.evicted_at_step[layer, head] != plain.evicted_at_step[layer, head]]
            np.testing.assert_allclose(swapped, swapped[0], rtol=1e-6)
    else:
        np.testing.assert_array_equal(fast.evicted_at_step, plain.evicted_at_step)
    # after a tie went the other way the layers above hold other entries: their scores move a little
    np.testing.assert_allclose(fast.scores, plain.scores, rtol=1e-2 if ties else 1e-5, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(fast.lost_mass, plain.lost_mass, rtol=2e-2 if ties else 1e-4, atol=1e-6)
    if plain.read_mask is not None:
        np.testing.assert_array_equal(fast.read_mask, plain.read_mask)
        np.testing.assert_allclose(fast.recall, plain.recall, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(fast.extra["logprobs"], plain.extra["logprobs"], rtol=0, atol=1e-2 if ties else 1e-4)
    assert fast.kv_bytes == plain.kv_bytes


# evicting selectors (one entry in, one out, once at the budget), stores and retrievers at a fixed
# capacity, a composition of both
SPECS = ["h2o:budget=16", "tova:budget=16", "streaming_llm:budget=16", "knorm:budget=16", "lru:budget=16",
         "window:budget=16", "kivi", "quant", "quest:read_budget=32,page_size=8", "sparq:read_budget=32",
         "snapkv+quant:budget=16", "h2o+quant:budget=16", "h2o+kivi:budget=16", "full"]


@pytest.mark.parametrize("spec", SPECS)
def test_fused_steps_give_the_policys_own_results(model, spec):
    plain = run(model, spec, False)
    first, fast = fused_run(model, spec)
    assert plain.timings["fused_steps"] == "off"
    assert first.timings["fused_steps"] in ("building", "some")  # never waited for
    assert fast.timings["fused_steps"] == "all", fast.timings
    # knorm's key norms sum in another order: on this model two keys' norms tie to 1e-8 (measured);
    # the first run is fused from the step its build ended at, if it ended during the run
    ties = spec.startswith("knorm")
    assert_same(first, plain, ties=ties)
    assert_same(fast, plain, ties=ties)


def test_one_graph_serves_every_layer_of_a_kind_and_every_later_run(model):
    """H2O's 4 layers share one build; Quest's first ``full_layers`` read everything (another
    kind), so it builds two; a third run builds nothing more."""
    before = len(fused_steps._ready)
    fused_run(model, "h2o:budget=12")
    assert len(fused_steps._ready) == before + 1
    fused_run(model, "quest:read_budget=24,page_size=8,full_layers=2")
    assert len(fused_steps._ready) == before + 3
    third = run(model, "h2o:budget=12", True)
    fused.wait()
    assert third.timings["fused_steps"] == "all" and len(fused_steps._ready) == before + 3


def test_steps_of_another_length_are_built_for_it(model):
    """A compiled step is specialized on its shapes: another budget is another build, and its
    first run decodes unfused (the same results), not a wrong fused one."""
    fused_run(model, "h2o:budget=10")
    other = run(model, "h2o:budget=11", True)
    assert other.timings["fused_steps"] in ("building", "some")
    assert_same(other, run(model, "h2o:budget=11", False))


def test_a_run_that_asks_for_no_fused_steps_builds_none(model):
    """A sweep's runs (fused_steps=False): the model's blocks may fuse, the policy's step is not
    built (each point of a sweep would build its own) and the run is the unfused run."""
    fused.wait()  # an earlier test's builds end first: they would count here
    before = len(fused_steps._ready)
    first = run(model, "h2o:budget=9", True, fused_steps=False)
    fused.wait()
    again = run(model, "h2o:budget=9", True, fused_steps=False)
    assert first.timings["fused_steps"] == again.timings["fused_steps"] == "off" and len(fused_steps._ready) == before
    assert_same(again, run(model, "h2o:budget=9", False))


def test_a_held_budgets_fused_step_writes_into_the_layers_own_tensors(model, monkeypatch):
    """One entry in, one out: the compiled step writes the kept entries, positions and scores back
    into the tensors the layer held (a captured CUDA graph then copies nothing back), and gives
    the same run."""
    plain = run(model, "h2o:budget=14", False)
    fused_run(model, "h2o:budget=14")
    replaced, hand_back = [], fused_steps.Template.hand_back

    def spy(self, layer, q_len):
        before = {p: get_path(layer, p) for p in self.paths}
        hand_back(self, layer, q_len)
        replaced.extend(p for p in self.paths if get_path(layer, p) is not before[p])

    monkeypatch.setattr(fused_steps.Template, "hand_back", spy)
    fast = run(model, "h2o:budget=14", True)
    assert fast.timings["fused_steps"] == "all" and not replaced
    assert_same(fast, plain)


def test_a_policy_torch_cannot_trace_decodes_as_before_and_says_so(model):
    """``random`` draws from the run's seeded generator, which torch.compile does not trace: its
    build fails once, and its runs decode with the policy's own steps."""
    plain = run(model, "random:budget=16", False)
    _, after = fused_run(model, "random:budget=16")
    assert after.timings["fused_steps"].startswith("failed: ")
    assert_same(after, plain)


def test_two_runs_at_once_share_the_built_steps(model):
    """Two visitors of a shared server: runs on two threads use the same compiled step, each on
    its own template, and get what each gets alone."""
    import threading

    specs = ["tova:budget=16", "kivi"]
    alone = {spec: run(model, spec, False) for spec in specs}
    for spec in specs:
        fused_run(model, spec)
    out: dict = {}

    def go(spec):
        out[spec] = [run(model, spec, True) for _ in range(3)]

    threads = [threading.Thread(target=go, args=(spec,)) for spec in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for spec in specs:
        assert len(out[spec]) == 3
        for trace in out[spec]:
            assert trace.timings["fused_steps"] == "all"
            assert_same(trace, alone[spec])
