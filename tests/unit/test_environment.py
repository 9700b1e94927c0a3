"""The tests' own environment: pinned by tests/conftest.py and tests/unit/conftest.py, whatever
the caller's shell holds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from kvviz.model import loading as models
from kvviz.model import weight_files as weights_cache


def test_the_network_is_out_of_reach():
    with pytest.raises(OSError, match="do not reach the network"):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(OSError, match="do not reach the network"):
        socket.getaddrinfo("example.org", 443)


def test_the_callers_model_weights_cache_and_ci_are_pinned(test_weights_cache):
    assert "KVVIZ_MODEL" not in os.environ and "CI" not in os.environ
    assert models.default_model_spec() == str(models.embedded_gguf_path())
    assert weights_cache.weights_cache_dir() == test_weights_cache


def test_child_processes_inherit_the_pinned_environment(test_weights_cache):
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('KVVIZ_MODEL'), os.environ.get('CI'), os.environ['KVVIZ_CACHE_DIR'])"],
        capture_output=True, text=True, check=True,
    )
    assert out.stdout.split() == ["None", "None", str(test_weights_cache)]
