"""``python -m kvviz dedup`` on the embedded SmolLM2: the one-click example (a passage twice, a
question after it), bytes by hand, the layer-0 copy exact, recompute 1.0 equal to the full cache."""

import json

import pytest

from kvviz import cli
from kvviz.record.examples import REPEATED_PASSAGE


def test_dedup_json(smollm, monkeypatch, capsys):
    monkeypatch.setattr("kvviz.commands.dedup.load", lambda args: smollm)
    assert cli.main(["dedup", "--example", "--share", "0", "--share", "1", "--new-tokens", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ids = smollm.tokenizer(f"Document 1: {REPEATED_PASSAGE}").input_ids
    (span,) = out["spans"]
    assert REPEATED_PASSAGE in span["text"] and len(span["occurrences"]) == 2
    assert span["tokens"] == out["prompt_ids"][span["occurrences"][1]:][:span["length"]]
    assert span["length"] >= len(ids) - 3  # the whole passage (the text around it may merge a token)
    per_token = 30 * 2 * 3 * 64 * 4  # layers x (K, V) x kv heads x head dim x float32
    assert out["full_bytes"] == out["prompt_tokens"] * per_token
    zero, whole = out["recompute"]
    assert zero["kv_bytes"] == (out["prompt_tokens"] - span["length"]) * per_token
    assert whole["kv_bytes"] == out["full_bytes"] and whole["kl_mean"] < 1e-5 and whole["top1_agreement"] == 1.0
    assert zero["kl_mean"] > whole["kl_mean"]
    assert out["key_deviation"][0] < 1e-5 and out["value_deviation"][0] == 0.0
    assert len(out["key_deviation"]) == 30 and max(out["value_deviation"]) > 0.1


@pytest.mark.parametrize("args, message", [
    (["--min-len", "0"], "--min-len must be at least 1"),
    (["--new-tokens", "0"], "--new-tokens must be between 1 and 64"),
])
def test_bad_input_exits_2_before_loading(args, message, capsys, monkeypatch):
    monkeypatch.setattr("kvviz.commands.dedup.load", lambda args: pytest.fail("loaded the model"))
    assert cli.main(["dedup", "--example", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {message}, got 0"
