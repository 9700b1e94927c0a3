"""``python -m kvviz`` as a user runs it: a real subprocess on the embedded model, and (for the
options, where a model load per call would cost most of the time) ``kvviz.cli.main`` in this
process on the session's model. Bad input ends with one line on stderr and exit status 2."""

import json
import subprocess
import sys

import pytest
import torch

from kvviz.record.trace import Trace


def kvviz(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "kvviz", *args], capture_output=True, text=True, timeout=timeout)


def test_policies_json_lists_every_policy_with_help():
    out = kvviz("policies", "--json")
    assert out.returncode == 0, out.stderr
    policies = {p["name"]: p for p in json.loads(out.stdout)}
    for name in ["full", "window", "streaming_llm", "h2o", "tova", "snapkv", "pyramidkv", "knorm", "lru", "lfu",
                 "random", "sparse_pattern", "merge", "quant", "kivi", "lowrank", "head_share"]:
        assert name in policies
        assert policies[name]["family"] and policies[name]["paper"] and policies[name]["summary"]
        assert all(p["help"] for p in policies[name]["params"])


def test_run_json_reports_what_the_cache_held(smollm):  # smollm: the weights cache is built first
    out = kvviz("run", "--prompt", "The capital of France is", "--policy", "h2o", "--budget", "4",
                "--param", "recent=2", "--max-new-tokens", "3", "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in ["model", "device", "policy", "params", "prompt_tokens", "generated_text", "generated_token_ids",
                "kv_bytes", "kv_bytes_full", "kept_positions", "timings"]:
        assert key in result
    assert result["prompt_tokens"] == len(smollm.tokenizer("The capital of France is").input_ids)
    assert result["params"]["h2o"]["recent"] == 2
    kept = result["kept_positions"]
    assert len(kept) == 30 and all(len(layer) == 3 for layer in kept)
    assert all(len(head) == 4 for layer in kept for head in layer)
    assert result["kv_bytes"] == 4 * smollm.summary.kv_bytes_per_token
    assert result["kv_bytes_full"] > result["kv_bytes"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--policy", "nope"], "Unknown policy"),
        (["--policy", "h2o", "--budget", "0"], "budget"),
        (["--policy", "h2o", "--budget", "500"], "larger than the prompt"),
        (["--policy", "quant", "--param", "bits=3"], "bits"),
        (["--policy", "h2o", "--param", "colour=red"], "Unknown parameter"),
        (["--policy", "h2o", "--param", "recent"], "KEY=VALUE"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args, message):
    out = kvviz("run", "--prompt", "Hello there, how are you?", "--device", "cpu", *args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_empty_prompt_is_refused():
    out = kvviz("run", "--prompt", "  ", "--device", "cpu")
    assert out.returncode == 2 and "empty" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------ in process, one model load

STORY = "The lighthouse keeper climbed the stairs every evening to light the lamp."


@pytest.fixture
def cli(smollm, monkeypatch, capsys):
    """``python -m kvviz ARGS`` in this process on the session's model: (status, stdout, stderr)."""
    from kvviz import cli as cli_module
    from kvviz.commands import run as run_command

    cli_module.command_modules()  # imported before the patch: a command that imports `load` by name would keep the lambda
    monkeypatch.setattr(run_command, "load", lambda args: smollm)

    def call(*argv):
        try:
            status = cli_module.main([str(a) for a in argv])
        except SystemExit as stop:  # argparse's own errors
            status = stop.code
        out = capsys.readouterr()
        return status, out.out, out.err

    return call


def strict_json(text):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_sampling_with_a_seed_draws_what_transformers_draws(cli, smollm, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(STORY)
    status, out, err = cli("run", "--prompt-file", prompt, "--sample", "--seed", 7, "--max-new-tokens", 8,
                           "--save-trace", tmp_path / "t.json", "--json")
    assert status == 0, err
    result = json.loads(out)
    ids = smollm.tokenizer(STORY).input_ids
    assert result["prompt_tokens"] == len(ids)
    # transformers' own sampling: the softmax of the logits, nothing cut, drawn after seeding torch
    torch.manual_seed(7)
    with torch.inference_mode():
        reference = smollm.model.generate(torch.tensor([ids]), do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=8)
    assert result["generated_token_ids"] == reference[0, len(ids):].tolist()
    # the saved trace is strict JSON and reads back as the run
    saved = tmp_path / "t.json"
    assert strict_json(saved.read_text())["generated_ids"] == result["generated_token_ids"]
    trace = Trace.load(saved)
    assert trace.generated_ids == result["generated_token_ids"] and trace.spec["policy"] == "full"
    # another seed draws something else
    status, out, _ = cli("run", "--prompt-file", prompt, "--sample", "--seed", 8, "--max-new-tokens", 8, "--json")
    assert status == 0 and json.loads(out)["generated_token_ids"] != result["generated_token_ids"]


def test_ratio_sets_the_budget_from_the_prompt_and_npz_traces_load(cli, smollm, tmp_path):
    status, out, err = cli("run", "--prompt", STORY, "--policy", "window", "--ratio", 0.5, "--max-new-tokens", 2,
                           "--save-trace", tmp_path / "t.npz", "--json")
    assert status == 0, err
    result = json.loads(out)
    n = result["prompt_tokens"]
    budget = round(0.5 * n)
    assert result["budget"] == budget and result["spec"]["ratio"] == 0.5
    assert result["kv_bytes"] == budget * smollm.summary.kv_bytes_per_token
    newest = list(range(n + 1 - budget, n + 1))  # the last step holds the prompt and the first new token
    assert all(head == newest for layer in result["kept_positions"] for head in layer)
    trace = Trace.load(tmp_path / "t.npz")
    assert trace.budget == budget and trace.final_kept_positions() == result["kept_positions"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt-file", "{long}"], "longer than the model's context"),
        (["--prompt-file", "{missing}"], "No such file"),
        (["--prompt", STORY, "--policy", "window", "--ratio", "0"], "ratio"),
        (["--prompt", STORY, "--max-new-tokens", "0"], "New tokens must be at least 1"),
    ],
)
def test_bad_runs_exit_2_with_one_line(cli, tmp_path, args, message):
    long = tmp_path / "long.txt"
    long.write_text("word " * 9000)
    args = [a.format(long=long, missing=tmp_path / "missing.txt") for a in args]
    status, out, err = cli("run", *args)
    assert status == 2 and out == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1

