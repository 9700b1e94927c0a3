"""The model of the GPU tests: ``$KVVIZ_MODEL`` as the GPU host sets it (its staged GGUF file, read
here before the session pins the environment for the other tests), else the embedded SmolLM2."""

import os

import pytest

GPU_MODEL = os.environ.get("KVVIZ_MODEL", "").strip() or None
# the fused blocks (kvviz.runtime.fused) are built in the background and used once built: a run's
# numbers would depend on when the build ended. Tests that fuse ask for it (fused=True).
os.environ["KVVIZ_FUSED"] = "0"


@pytest.fixture(scope="session")
def gpu_model():
    """SmolLM2 on CUDA in its default GPU dtype (bf16)."""
    from kvviz.model.loading import load_model

    return load_model(GPU_MODEL, device="cuda")


@pytest.fixture(scope="session")
def gpu_model_fp32():
    """SmolLM2 on CUDA in float32 (for comparisons that must not depend on bf16 rounding)."""
    from kvviz.model.loading import load_model

    return load_model(GPU_MODEL, device="cuda", dtype="float32")
