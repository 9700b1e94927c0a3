"""``python -m kvviz calc`` as a user runs it: a real subprocess, JSON checked by hand arithmetic."""

import json
import subprocess
import sys

import pytest


def kvviz(*args):
    return subprocess.run([sys.executable, "-m", "kvviz", "calc", *args], capture_output=True, text=True, timeout=120)


def test_json_for_the_seeds_example():
    out = kvviz("--arch", "llama-2-7b", "--context", "4096", "--dtype", "fp16", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["arch"] == "llama-2-7b" and result["attention"] == "MHA"
    assert result["bytes_per_token"] == 2 * 32 * 32 * 128 * 2
    assert result["bytes_per_sequence"] == result["bytes_total"] == 2 * 32 * 4096 * 4096 * 2
    assert "max_sequences" not in result


def test_json_with_a_batch_and_a_gpu():
    out = kvviz("--arch", "llama-3.1-8b", "--context", "32k", "--batch", "3", "--gpu", "h100", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    per_sequence = 32_768 * 2 * 32 * 8 * 128 * 2
    assert result["context"] == 32_768 and result["bytes_total"] == 3 * per_sequence
    assert result["max_sequences"] == (int(81_559 * 2**20 * 0.9) - 2 * 8_030_261_248) // per_sequence


def test_mla_from_a_config_file(tmp_path):
    config = {"model_type": "deepseek_v2", "num_hidden_layers": 60, "num_attention_heads": 128, "hidden_size": 5120,
              "kv_lora_rank": 512, "qk_rope_head_dim": 64, "vocab_size": 102400}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = kvviz("--config", str(path), "--context", "1000", "--params", "236e9", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["attention"] == "MLA" and result["bytes_per_token"] == (512 + 64) * 60 * 2
    assert result["params"] == 236_000_000_000


def test_text_report_and_list():
    out = kvviz("--arch", "gemma-2-9b", "--context", "8192")
    assert out.returncode == 0, out.stderr
    assert "21 full layers × 8,192 tokens + 21 sliding layers × 4,096 tokens" in out.stdout
    listing = kvviz("--list", "--json")
    names = {row["arch"] for row in json.loads(listing.stdout)}
    assert {"llama-2-7b", "llama-3.1-8b", "mistral-7b", "deepseek-v2", "smollm2-135m", "gemma-2-9b"} <= names


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "llama-9", "--context", "5"], "unknown architecture 'llama-9'"),
        (["--arch", "nosuch"], "unknown architecture 'nosuch'"),  # the architecture first, then --context
        (["--arch", "llama-2-7b", "--context", "1e400"], "--context must be a whole number, not '1e400'"),
        (["--arch", "llama-2-7b", "--context", "5", "--batch", "1e30"], "batch must be a positive whole number of sequences up to 65,536"),
        (["--arch", "llama-2-7b", "--context", "5", "--params", "inf"], "--params must be a whole number"),
        (["--arch", "llama-2-7b", "--context"], "argument --context: expected one argument"),
        (["--arch", "llama-2-7b", "--context", "0"], "context must be a positive"),
        (["--arch", "llama-2-7b", "--context", "lots"], "--context must be a whole number"),
        (["--arch", "llama-2-7b"], "give --context"),
        (["--context", "5"], "give one of --arch NAME or --config FILE"),
        (["--arch", "llama-2-7b", "--context", "5", "--gpu", "tpu"], "unknown GPU 'tpu'"),
        (["--arch", "llama-2-7b", "--context", "5", "--dtype", "int3"], "unknown dtype 'int3'"),
        (["--config", "/nonexistent/config.json", "--context", "5"], "cannot read"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    out = kvviz(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and message in out.stderr


def test_a_config_file_is_named_after_its_model_and_bounded(tmp_path):
    config = {"model_type": "llama", "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "hidden_size": 4096, "vocab_size": 128256, "intermediate_size": 14336}
    path = tmp_path / "path" / "to" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(config))
    out = kvviz("--config", str(path), "--context", "4k", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["arch"] == "llama" and result["bytes_per_token"] == 2 * 32 * 8 * 128 * 2  # not "to"
    for layers in (1e30, 2**40, 10**7):
        path.write_text(json.dumps(config | {"num_hidden_layers": layers}))
        out = kvviz("--config", str(path), "--context", "4k")
        assert out.returncode == 2 and out.stderr.count("\n") == 1
        assert "the config's num_hidden_layers must be a whole number from 1 to 1,024" in out.stderr


def test_a_config_without_the_needed_fields(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"hidden_size": 64, "vocab_size": 10}')
    out = kvviz("--config", str(path), "--context", "5")
    assert out.returncode == 2 and "no num_hidden_layers" in out.stderr and out.stderr.count("\n") == 1
    path.write_text("{oops")
    out = kvviz("--config", str(path), "--context", "5")
    assert out.returncode == 2 and "not valid JSON" in out.stderr


def test_calc_does_not_import_torch():
    """The calculator needs no model: the CLI answers without importing torch (fast, and usable
    where torch is not installed)."""
    code = ("import sys, kvviz.cli; rc = kvviz.cli.main(['calc', '--arch', 'llama-2-7b', '--context', '4k']); "
            "sys.exit(rc or ('torch' in sys.modules and 3))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "512.0 KiB" in out.stdout  # 2 × 32 layers × 32 heads × 128 dims × 2 bytes, by hand: 524,288 bytes
