"""``python -m kvviz paged`` as a user runs it: a real subprocess on the embedded model."""

import json
import subprocess
import sys

import pytest

from kvviz.runtime import engine


def kvviz(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "kvviz", "paged", *args], capture_output=True, text=True, timeout=timeout)


def test_paged_json(smollm, tmp_path):
    prompts = ["The capital of France is", "The capital of France is a city"]  # 5 and 7 tokens
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n")
    out = kvviz("--prompts-file", str(path), "--block-size", "4", "--num-blocks", "24", "--n", "2", "--sample",
                "--seed", "3", "--max-new-tokens", "3", "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["block_size"] == 4 and result["num_blocks"] == 24
    assert [r["id"] for r in result["requests"]] == ["r0", "r0.1", "r1", "r1.1"]
    for r in result["requests"]:
        ids = smollm.tokenizer(prompts[r["prompt_index"]]).input_ids
        assert r["prompt_tokens"] == len(ids)
        seed = 3 + 1000 * r["prompt_index"] + r["sample_index"]  # what the contiguous cache samples with that seed
        ref = engine.run(smollm.model, smollm.tokenizer, ids, "full", max_new_tokens=3, sample=True, seed=seed)
        assert r["generated_token_ids"] == ref.generated_ids, r["id"]
        assert r["generated_text"] == smollm.tokenizer.decode(ref.generated_ids, skip_special_tokens=True)
        assert r["block_table"][0] == result["requests"][0]["block_table"][0]  # "The capital of France": one block
    assert result["prefix_hit_blocks"] == 1  # r1 finds r0's first block
    assert result["cow_copies"] == 2  # each prompt ends inside a block; its second sample copies that block
    assert result["preemptions"] == 0
    assert 5 <= result["peak_blocks_used"] <= 24
    waste = result["waste"]
    used = sum(r["prompt_tokens"] + len(r["generated_token_ids"]) for r in result["requests"])
    assert waste["reserve_max"] == pytest.approx(1 - used / (4 * 8192))
    assert set(waste["paged"]) == {"4", "8", "16", "32"} and waste["exact"] == 0.0
    padded = max(r["prompt_tokens"] for r in result["requests"]) + max(len(r["generated_token_ids"]) for r in result["requests"])
    assert waste["static_batch"] == pytest.approx(1 - used / (4 * padded))  # one static batch of the 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--block-size", "0"], "block size must be at least 1"),
        (["--num-blocks", "2", "--block-size", "2"], "cannot hold request r0 alone"),
        (["--n", "0"], "n (samples per prompt) must be at least 1"),
        (["--policy", "pyramidkv", "--budget", "4"], "one budget for every layer"),
    ],
)
def test_bad_input_is_one_line_and_status_2(smollm, args, message):
    out = kvviz("--prompt", "The capital of France is", "--device", "cpu", *args)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
