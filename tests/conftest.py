"""Shared fixtures: the embedded SmolLM2 (loaded once per session) and a tiny random Llama."""

from __future__ import annotations

import pytest
import torch


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
    from kvviz.models import load_model

    return load_model(device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_llama():
    """A random-weight LlamaForCausalLM: 2 layers, hidden 64, 4 query heads, 2 KV heads, head dim 16."""
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
