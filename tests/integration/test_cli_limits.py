"""The CLI under load and in any language: an out-of-memory error is one line and exit status 2,
JSON carries the true text of a Chinese/emoji run, and a budget smaller than the policy's window
is said before the run."""

from __future__ import annotations

import json

import torch

from kvviz import cli
from kvviz.runtime import engine
from kvviz.policies import spec


def test_out_of_memory_is_one_line_and_status_2(smollm, monkeypatch, capsys):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine, "run", no_memory)
    monkeypatch.setattr("kvviz.model.loading.load_model", lambda *a, **k: smollm)
    code = cli.main(["run", "--prompt", "Hello", "--policy", "h2o", "--max-new-tokens", "2"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith(("note: ", "warning: "))]  # budget notes come first
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: The device ran out of memory") and "Traceback" not in err[0]


def test_json_carries_the_true_text_in_any_language(smollm, monkeypatch, capsys):
    monkeypatch.setattr("kvviz.model.loading.load_model", lambda *a, **k: smollm)
    prompt = "🙂🙂 KV缓存是什么？"
    code = cli.main(["run", "--prompt", prompt, "--chat", "--max-new-tokens", "6", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["generated_text"] == smollm.tokenizer.decode(out["generated_token_ids"])
    assert "\ufffd" not in out["generated_text"] or "\ufffd" in smollm.tokenizer.decode(out["generated_token_ids"])


def test_a_budget_below_the_window_is_said_before_the_run(smollm, monkeypatch, capsys):
    monkeypatch.setattr("kvviz.model.loading.load_model", lambda *a, **k: smollm)
    code = cli.main(["run", "--prompt", "What is the capital of France?", "--chat", "--policy", "h2o:recent=16,ratio=0.25", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 0
    prompt_len = len(smollm.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=True)["input_ids"])
    budget = max(1, round(0.25 * prompt_len))
    assert budget < 16
    assert f"note: With {budget} entries per layer and KV head, h2o keeps the {budget} most recent tokens (recent)." in err
    assert f"warning: recent = 16 asks to protect more entries than the budget holds ({budget} per layer and KV head)" in err


def test_budget_notes_follow_the_policy_not_its_name():
    notes = spec.budget_notes(spec.PolicySpec.parse("snapkv:window=8,ratio=0.25"), 585)
    assert notes == [("info", "With 146 entries per layer and KV head, snapkv keeps the 8 last tokens of the prompt (window),"
                      " and the 138 other entries chosen by its scores.")]
    assert spec.budget_notes(spec.PolicySpec.parse("full"), 37) == []
