"""``python -m kvviz`` as a user runs it: a real subprocess on the embedded model."""

import json
import subprocess
import sys

import pytest


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
def test_bad_input_is_one_line_and_a_nonzero_exit(args, message):
    out = kvviz("run", "--prompt", "Hello there, how are you?", "--device", "cpu", *args)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_empty_prompt_is_refused():
    out = kvviz("run", "--prompt", "  ", "--device", "cpu")
    assert out.returncode != 0 and "empty" in out.stderr and "Traceback" not in out.stderr
