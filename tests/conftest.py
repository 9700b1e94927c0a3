"""Shared fixtures: the embedded SmolLM2 (loaded once per session) and a tiny random Llama.

Tests do not depend on the user's environment: ``pinned_environment`` (every session) unsets
``KVVIZ_MODEL`` (the default model is the embedded SmolLM2), points ``KVVIZ_CACHE_DIR`` at a
weights cache of the tests' own, and unsets ``CI`` after reading it once (``in_ci``), so neither
the tests nor the processes they start (the CLI, ``streamlit run``) see the caller's values.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")  # read before pinning
TEST_WEIGHTS_CACHE = Path(tempfile.gettempdir()) / "kvviz-tests" / "weights-cache"  # kept between sessions
# A prompt SmolLM2 never ends early on (it counts on, or repeats a number, for hundreds of tokens;
# the chat examples end at EOS after 8-18), for tests that press Stop in the middle of a phase: with
# a short phase, Stop could come after the phase was over. Use it without the chat template.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


@pytest.fixture(scope="session", autouse=True)
def pinned_environment():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("KVVIZ_MODEL", raising=False)
        mp.setenv("KVVIZ_CACHE_DIR", str(TEST_WEIGHTS_CACHE))
        mp.delenv("CI", raising=False)
        yield


@pytest.fixture(autouse=True)
def no_kept_full_runs():
    """Each test starts with no full-cache runs kept for reuse (``kvviz.live.job.FULL_RUNS`` is
    process-wide: a test that stops in the full cache's phase must see that phase run)."""
    from kvviz.live.job import FULL_RUNS

    FULL_RUNS.clear()
    yield


@pytest.fixture(scope="session")
def test_weights_cache() -> Path:
    """The weights cache the tests use (``KVVIZ_CACHE_DIR``)."""
    return TEST_WEIGHTS_CACHE


@pytest.fixture(scope="session")
def in_ci() -> bool:
    """Whether the tests run under CI (``CI`` was set when the session started): e2e tests then
    fail instead of skipping when Chromium is missing."""
    return IN_CI


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M-Instruct on the CPU in float32 (a kvviz LoadedModel)."""
    from kvviz.model.loading import load_model

    return load_model(device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tiny_llama():
    """A random-weight LlamaForCausalLM: 2 layers, hidden 64, 4 query heads, 2 KV heads, head dim 16.
    Built afresh (same seed, same weights) for each test module, so what one module leaves on the
    model (transformers' output-recording hooks, say) never reaches another."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    return model.eval()


def pytest_report_header(config):
    import transformers

    return f"kvviz under torch {torch.__version__}, transformers {transformers.__version__} ({transformers.__file__})"
