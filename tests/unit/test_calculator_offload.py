"""The calculator's offload mode against hand arithmetic: Llama-3.1-8B (32 layers, 8 KV heads,
head_dim 128, bf16), 32,768 tokens, a read budget of 2,048 entries."""

import json

import pytest

from kvviz import cli
from kvviz.calculator import memory as calc
from kvviz.calculator.offload import Offload, offload_estimate

N, L, KV, D = 32768, 32, 8, 128
ENTRY = 2 * KV * D * 2  # one token's keys and values in one layer, bf16: 4,096 bytes
H100_LEFT = 60_908_206_489  # 81,559 MiB x 0.9 - the bf16 weights (the plain calculator's number)


def llama(method, gpu="h100", **params):
    return offload_estimate(calc.get_architecture("llama-3.1-8b"), calc.Scenario(context=N), Offload(method, 2048, params), gpu=gpu)


def test_quest_by_hand():
    e = llama("quest", page_size=16, full_layers=0)
    summary = L * 2 * KV * (N // 16) * D * 2  # min and max key per page of 16, 16-bit, per layer and KV head
    assert e.summary_bytes == summary == 256 * 2**20
    assert e.read_buffer_bytes == e.moved_bytes == L * 2048 * ENTRY == 256 * 2**20
    assert e.device_bytes == 512 * 2**20
    assert e.host_bytes == e.full_bytes == L * N * ENTRY == 4 * 2**30
    assert e.max_sequences_full == H100_LEFT // (4 * 2**30) == 14
    assert e.max_sequences_offload == H100_LEFT // (512 * 2**20) == 113
    assert e.link_ms == pytest.approx(256 * 2**20 / 64e9 * 1e3)  # 4.19 ms at PCIe 5.0 x16
    assert e.hbm_ms == pytest.approx(256 * 2**20 / 3350e9 * 1e3)
    assert e.full_hbm_ms == pytest.approx(4 * 2**30 / 3350e9 * 1e3)


def test_quests_first_layers_stay_whole_and_pages_round_the_read_set():
    e = llama("quest", page_size=16)  # the policy's default: the first 2 layers read everything
    assert e.whole_layer_bytes == 2 * N * ENTRY
    assert e.host_bytes == 30 * N * ENTRY
    e = llama("quest", page_size=1000, full_layers=0)  # 2,048 // 1,000 = 2 pages, at least 3: 3,000 entries
    assert e.read_entries == 3000 and e.moved_bytes == L * 3000 * ENTRY


def test_simhash_bits():
    e = llama("simhash", bits=8, tables=4)  # 32 bits = 4 bytes per key per KV head
    assert e.summary_bytes == L * KV * N * 4 == 32 * 2**20
    e = llama("simhash", bits=3, tables=3)  # 9 bits round up to 2 bytes
    assert e.summary_bytes == L * KV * N * 2


def test_sparq_moves_r_components_of_every_key():
    e = llama("sparq", r=16)
    assert e.summary_bytes == 0  # it keeps none
    assert e.sparq_key_bytes == L * KV * N * 16 * 2 == 256 * 2**20
    assert e.moved_bytes == L * 2048 * ENTRY + e.sparq_key_bytes


def test_mla_and_short_contexts():
    # MLA: one latent "head" of 512 + 64 elements per layer, 60 layers
    e = offload_estimate(calc.get_architecture("deepseek-v2"), calc.Scenario(context=N), Offload("simhash", 2048))
    assert e.summary_bytes == 60 * N * 4
    assert e.moved_bytes == 60 * 2048 * 576 * 2 and e.host_bytes == e.full_bytes == 60 * N * 576 * 2
    # a read set covering the context reads everything: the layer stays on the device whole
    short = offload_estimate(calc.get_architecture("llama-3.1-8b"), calc.Scenario(context=1024), Offload("simhash", 2048))
    assert short.device_bytes == short.full_bytes and short.host_bytes == short.moved_bytes == 0


@pytest.mark.parametrize("offload, dtype, words", [
    (Offload("nope"), "bf16", "unknown offload method"),
    (Offload("quest", 0), "bf16", "read_budget must be at least 1"),
    (Offload("quest", 64, {"bits": 4}), "bf16", "quest takes page_size"),
    (Offload("quest", 64, link_gbps=0), "bf16", "host link bandwidth"),
    (Offload("quest"), "kivi-2", "float cache"),
])
def test_bad_settings_say_what(offload, dtype, words):
    with pytest.raises(calc.CalcError, match=words):
        offload_estimate(calc.get_architecture("llama-3.1-8b"), calc.Scenario(context=N, dtype=dtype), offload)


def test_cli_json(capsys):
    code = cli.main(["calc", "--arch", "llama-3.1-8b", "--context", "32k", "--gpu", "h100", "--offload", "quest",
                     "--read-budget", "2048", "--page-size", "16", "--full-layers", "0", "--link-gbps", "32", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["summary_bytes"] == 256 * 2**20 and out["moved_bytes"] == 256 * 2**20 and out["host_bytes"] == 4 * 2**30
    assert out["max_sequences_offload"] == 113 and out["max_sequences_full"] == 14
    assert out["link_ms"] == pytest.approx(256 * 2**20 / 32e9 * 1e3)
    assert cli.main(["calc", "--arch", "llama-3.1-8b", "--context", "32k", "--offload", "sparq", "--r", "8"]) == 0
    assert "moved per step" in capsys.readouterr().out


def test_the_offload_sentence_in_the_readme():
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    e = offload_estimate(calc.get_architecture("llama-3.1-8b"), calc.Scenario(context=131072),
                         Offload("quest", 2048, {"page_size": 16}), gpu="h100", weights_dtype="fp8")
    assert (e.max_sequences_offload, e.max_sequences_full) == (29, 4)
    assert (f"{e.max_sequences_offload} requests of 131,072 tokens to Llama-3.1-8B fit on one H100 instead of "
            f"{e.max_sequences_full}; each step then moves its read set over a host link of 64 (GB/s) against the 3,350 of the H100's HBM") in text
