"""Every decoder family kvviz claims, on a tiny random model of each built from its transformers
config class (tests/model_families.py): ``full`` equals transformers' greedy generate; h2o, snapkv
and quant hold the bytes their rules give; the attention maps equal transformers' eager attention
weights; what kvviz cannot do is refused with its one-line reason. README's "Models" table is the
rendering of the same dict (``FAMILIES``, exported here)."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.model_families import FAMILIES, build, render_table

from kvviz.attention import maps
from kvviz.attention.data import pool_matrix
from kvviz.model import capture
from kvviz.model.capture import CaptureError
from kvviz.model.loading import summarize_model
from kvviz.policies import BudgetSelector, PolicyError
from kvviz.policies.selector import Retriever
from kvviz.runtime import engine

__all__ = ["FAMILIES", "render_table"]

PROMPT = [(7 * i + 3) % 120 + 3 for i in range(20)]
STEPS, BUDGET = 3, 12
README = Path(__file__).resolve().parents[2] / "README.md"


class Tok:
    eos_token_id = None

    def decode(self, ids):
        return " ".join(map(str, ids))


@functools.cache
def model_of(name):
    model = build(name)
    if model is None:
        pytest.skip(f"transformers {__import__('transformers').__version__} has no {FAMILIES[name].config}")
    return model


def run(model, policy, **kw):
    return engine.run(model, Tok(), PROMPT, policy, max_new_tokens=STEPS, stop_at_eos=False, **kw)


def entry_bytes(model) -> int:
    """Keys and values of one token, every layer, float32: from the config, by hand."""
    c = model.config
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * kv * head_dim * 4, kv, head_dim


FAMILY_NAMES = list(FAMILIES)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_loader_kernel_and_summary(name):
    model = model_of(name)
    # what the installed transformers declares (Gemma 2 takes sdpa on 5.17 and refuses it on newer releases)
    expected = "sdpa" if getattr(type(model), "_supports_sdpa", False) else "eager"
    assert model.config._attn_implementation == expected
    kernel = dict(summarize_model(model, name, "test").as_rows())["Attention kernel"]
    assert kernel.startswith(expected)
    assert ("does not support sdpa" in kernel) == (expected == "eager")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_summary_names_the_sliding_layers_the_config_declares(name):
    model = model_of(name)
    cfg = model.config
    kinds = getattr(cfg, "layer_types", None) or ["sliding_attention" if getattr(cfg, "sliding_window", None) else "full_attention"] * 2
    if getattr(cfg, "use_sliding_window", True) is False or not getattr(cfg, "sliding_window", None):
        kinds = ["full_attention"] * 2
    want = {i: cfg.sliding_window for i, kind in enumerate(kinds) if kind == "sliding_attention"}
    summary = summarize_model(model, name, "test")
    assert summary.sliding_windows == want
    row = dict(summary.as_rows()).get("Sliding-window layers", "")
    assert bool(row) == bool(want) and all(f"last {w:,} keys" in row for w in want.values())


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_full_equals_transformers_greedy(name):
    model = model_of(name)
    if not FAMILIES[name].runs:
        for policy in ("full", "h2o", "quant"):
            with pytest.raises(PolicyError, match=r"^DeepseekV3ForCausalLM: multi-head latent attention \(MLA\) caches a compressed latent"):
                run(model, policy)
        return
    ref = model.generate(torch.tensor([PROMPT]), max_new_tokens=STEPS, do_sample=False, pad_token_id=0)
    assert run(model, "full").generated_ids == ref[0, len(PROMPT):].tolist()


@pytest.mark.parametrize("name", [n for n in FAMILY_NAMES if FAMILIES[n].runs])
def test_a_forced_continuation_read_in_chunks_equals_transformers_forward(name):
    """The full cache's forced run, read in chunks (kvviz.runtime.forced_chunks), gives transformers'
    own log-probabilities over the whole text, sliding windows included; over a compressed cache it
    equals its stepped run (which the test below checks against transformers)."""
    model = model_of(name)
    forced = [(5 * i + 1) % 100 + 3 for i in range(12)]  # 20 + 12 tokens: past every sliding window (8)
    chunked = engine.run(model, Tok(), PROMPT, "full", forced_ids=forced, keep_logprobs=True, forced_chunk=5)
    assert chunked.timings["decode_path"] == "chunked"
    with torch.inference_mode():
        ref = model(input_ids=torch.tensor([PROMPT + forced[:-1]])).logits[0, len(PROMPT) - 1 :].double().log_softmax(-1)
    assert float((chunked.extra["logprobs"].double() - ref).abs().max()) < 1e-4
    runs = {c: engine.run(model, Tok(), PROMPT, "snapkv", budget=BUDGET, forced_ids=forced, keep_logprobs=True, forced_chunk=c) for c in (0, 5)}
    assert runs[5].timings["decode_path"] == "chunked"  # a sliding window over it too: masked per KV head
    assert runs[5].kv_bytes == runs[0].kv_bytes
    assert float((runs[5].extra["logprobs"] - runs[0].extra["logprobs"]).abs().max()) < 1e-4


def masked_forward_logprobs(model, ids: list[int], prompt_len: int, budget: int, question_at: int | None = None) -> torch.Tensor:
    """transformers' own eager forward over ``ids`` with a mask per kind of layer: causal, the
    layer's sliding window, and what the ``window`` policy leaves the attention: for the queries
    after the prompt the last ``budget`` + 1 tokens (``budget`` held, then the new one); with
    ``question_at``, for the question's queries the context's last ``budget`` tokens and the
    question's own. The log-probabilities of every position from the prompt's last on, float64."""
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    i, j = torch.arange(len(ids))[:, None], torch.arange(len(ids))[None, :]
    context = prompt_len if question_at is None else question_at

    def mask(window: int | None) -> torch.Tensor:
        visible = (j <= i) & ((i < context) | ((i < prompt_len) & (j >= context - budget)) | (j >= i - budget))
        if window:
            visible &= j > i - window
        return torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)[None, None]

    window = min(capture.sliding_windows(model).values())
    if getattr(model.config, "layer_types", None) is None:  # every layer slides (Mistral)
        masks = mask(window)
    else:
        masks = {"full_attention": mask(None), "sliding_attention": mask(window)}
    with torch.inference_mode():
        return ref(input_ids=torch.tensor([ids]), attention_mask=masks).logits[0, prompt_len - 1 :].double().log_softmax(-1)


@pytest.mark.parametrize("name", [n for n in FAMILY_NAMES if FAMILIES[n].runs and FAMILIES[n].args.get("sliding_window")])
@pytest.mark.parametrize("budget", [5, 12])  # within the window (8) and past it
@pytest.mark.parametrize("question_at", [None, 12])  # the prompt whole, or a question of 8 after a context of 12
def test_a_sliding_window_over_a_compressed_cache_is_the_models_own(name, budget, question_at):
    """A policy's evictions come on top of the model's window: a sliding layer's query reads the held
    entries whose true positions lie within its window (not the last slots), per KV head, at a
    decode step and in a question's forward after its compressed context. The window policy's
    forced run equals transformers' forward with the window policy's and the model's masks."""
    model = model_of(name)
    forced = [(5 * i + 1) % 100 + 3 for i in range(12)]
    ref = masked_forward_logprobs(model, PROMPT + forced[:-1], len(PROMPT), budget, question_at)
    trace = engine.run(model, Tok(), PROMPT, "window", budget=budget, forced_ids=forced, keep_logprobs=True, question_at=question_at)
    assert float((trace.extra["logprobs"].double() - ref).abs().max()) < 1e-5


@pytest.mark.parametrize("name", [n for n in FAMILY_NAMES if FAMILIES[n].runs])
def test_the_full_cache_reads_a_question_after_its_context_as_one_prompt(name):
    """With nothing evicted, a prompt in two forwards (the context, then the question) is the prompt
    in one: the question's forward keeps the model's own mask, its sliding window included."""
    model = model_of(name)
    whole = run(model, "full", keep_logprobs=True)
    split = run(model, "full", keep_logprobs=True, question_at=12)
    assert split.generated_ids == whole.generated_ids
    assert float((split.extra["logprobs"] - whole.extra["logprobs"]).abs().max()) < 1e-4


@pytest.mark.parametrize("name", [n for n in FAMILY_NAMES if FAMILIES[n].runs])
def test_policies_hold_the_bytes_of_their_rules(name):
    model = model_of(name)
    per_token, kv, head_dim = entry_bytes(model)
    n = len(PROMPT)
    assert run(model, "h2o", budget=BUDGET).kv_bytes == [BUDGET * per_token] * STEPS  # evicts at every step
    assert run(model, "snapkv", budget=BUDGET).kv_bytes == [(BUDGET + s) * per_token for s in range(STEPS)]  # the prompt, once
    # 4-bit codes and a float32 scale and zero point per group of min(32, head_dim) channels
    per_head = head_dim // 2 + (head_dim // min(32, head_dim)) * 2 * 4
    layers = model.config.num_hidden_layers
    assert run(model, "quant").kv_bytes == [(n + s) * 2 * layers * kv * per_head for s in range(STEPS)]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_attention_maps_equal_transformers_eager_weights(name):
    model = model_of(name)
    if not FAMILIES[name].maps:
        with pytest.raises(CaptureError, match="sinks|MLA"):
            capture.capture_layers(model, PROMPT, [0, 1])
        return
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        weights = eager(torch.tensor([PROMPT]), output_attentions=True).attentions  # per layer (1, heads, seq, seq)
    qks = capture.capture_layers(model, PROMPT, [0, 1])
    for layer in (0, 1):  # Gemma's and gpt-oss's layer 0 slides, layer 1 is global
        for head in range(qks[layer].n_q_heads):
            np.testing.assert_allclose(maps.full_attention(qks[layer], head), weights[layer][0, head].numpy(), atol=1e-5, rtol=0)
    for pool in maps.POOLS:  # the overview's thumbnails and profiles, by hand from the same weights
        ov = maps.overview(model, PROMPT, cells=7, pool=pool, sink_tokens=2, local_tokens=3)
        assert ov.tile == 3 and ov.profiles.from_query == 3
        for layer in (0, 1):
            for head in range(qks[layer].n_q_heads):
                a = weights[layer][0, head].double().numpy()
                np.testing.assert_allclose(ov.thumbs[layer, head], pool_matrix(a, 3, pool, window=qks[layer].sliding_window), atol=1e-6, equal_nan=True)
                rows = np.arange(3, len(PROMPT))
                ent = -(np.where(a > 0, a * np.log(np.where(a > 0, a, 1)), 0)).sum(1)[rows]
                expected = {
                    "sink_mass": a[rows, :2].sum(1).mean(),
                    "local_mass": np.mean([a[i, i - 2 : i + 1].sum() for i in rows]),
                    "entropy": ent.mean(),
                    "mean_distance": np.mean([(a[i] * (i - np.arange(len(PROMPT)))).sum() for i in rows]),
                }
                for field, value in expected.items():
                    assert getattr(ov.profiles, field)[layer, head] == pytest.approx(value, abs=2e-5), (pool, layer, head, field)


def test_readme_models_table_is_the_rendering():
    text = README.read_text()
    section = text[text.index("## Using another model"):]
    section = section[: section.index("\n## ", 3)]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    assert table == render_table(), "README's Models table: paste tests/model_families.render_table()"
    assert re.search(r"tests/unit/test_model_families\.py", section)


@pytest.mark.parametrize("name", [n for n in FAMILY_NAMES if FAMILIES[n].runs])
def test_every_registered_policy_runs_or_refuses_in_one_line(name):
    from kvviz.policies import registry

    model = model_of(name)
    _, _, head_dim = entry_bytes(model)
    for policy, cls in registry().items():
        budget = 16 if issubclass(cls, BudgetSelector) else None  # sparse_pattern needs room for its pattern
        params = {"rank": head_dim // 2} if policy == "lowrank" else None
        params = {"head_ratio": 1.0} if policy == "duo_attention" else params  # a retrieval head holds its layer whole
        if issubclass(cls, Retriever) and capture.sliding_windows(model):
            with pytest.raises(PolicyError, match=rf"^{policy} picks the entries each step reads, .* sliding window"):
                run(model, policy)
            continue
        trace = engine.run(model, Tok(), PROMPT, policy, params=params, budget=budget, max_new_tokens=2, stop_at_eos=False)
        assert trace.n_steps == 2 and 0 < trace.kv_bytes[-1], (name, policy)
        if budget is not None:
            assert trace.kv_bytes[0] < trace.kv_bytes_full[0], (name, policy)
