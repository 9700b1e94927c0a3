"""Sizes a visitor can choose on the Paged cache page are checked before memory is spent on them:
the pool against the memory free on its device, the number of prompts, and a split model in the CLI."""

from __future__ import annotations

import pytest

from kvviz import cli
from kvviz.paged import run as paged_run
from kvviz.paged.block_manager import PoolTooSmall
from kvviz.record.text import PromptError


class Tok:
    """One token per character."""

    def __call__(self, text, **kw):
        return type("Encoding", (), {"input_ids": [ord(c) % 100 for c in text]})()


def test_a_pool_larger_than_half_the_free_memory_is_refused_before_it_is_allocated(tiny_llama, monkeypatch):
    per_token = paged_run.bytes_per_token(tiny_llama)
    assert per_token == 2 * 2 * 2 * 16 * 4  # K and V, 2 layers, 2 KV heads, head dim 16, float32: by hand
    monkeypatch.setattr(paged_run, "free_bytes", lambda device: 1000 * 64 * per_token)  # room for 500 blocks of 64
    settings = paged_run.PagedSettings(block_size=64, num_blocks=501)
    with pytest.raises(PoolTooSmall, match="501 blocks of 64 slots"):
        paged_run.check_pool_fits(tiny_llama, settings)
    paged_run.check_pool_fits(tiny_llama, paged_run.PagedSettings(block_size=64, num_blocks=500))  # just fits


def test_at_most_max_prompts():
    too_many = [f"prompt {i}" for i in range(paged_run.MAX_PROMPTS + 1)]
    with pytest.raises(PromptError, match=f"at most {paged_run.MAX_PROMPTS}"):
        paged_run.encode_all(Tok(), too_many, chat=False, max_context=None)
    assert len(paged_run.encode_all(Tok(), too_many[:-1], chat=False, max_context=None)) == paged_run.MAX_PROMPTS


def test_the_cli_refuses_a_split_model_before_loading_one(capsys):
    assert cli.main(["paged", "--prompt", "hi", "--device-map", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one block pool on one device" in err[0]
