"""``python -m kvviz bench`` as a user runs it: a real subprocess on the embedded model, its
numbers checked by hand arithmetic from the model's config and the card's known bandwidth."""

import json
import subprocess
import sys

import pytest

from kvviz.runtime import bench


def kvviz(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "kvviz", "bench", *args], capture_output=True, text=True, timeout=timeout)


def test_bench_json_and_table(smollm, tmp_path):
    path = tmp_path / "bench.json"
    out = kvviz("--prompt-tokens", "40", "--new-tokens", "4", "--repeats", "1", "--policies", "full,h2o",
                "--budget", "16", "--device", "cpu", "--json", str(path))
    assert out.returncode == 0, out.stderr
    result = json.loads(path.read_text())
    c = smollm.model.config
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4  # fp32
    assert result["card"] == "CPU" and result["prompt_tokens"] == 40 and result["new_tokens"] == 4
    assert result["weight_bytes"] == sum(p.numel() * 4 for p in smollm.model.parameters())
    generate, full, h2o = result["rows"]
    assert generate["config"] == "transformers generate" and generate["speedup"] == 1.0
    before, after = result["baseline_ms"]["transformers generate"]  # timed before and after the kvviz rows
    assert generate["step_ms"] == min(before, after)
    # kvviz's full cache decodes transformers' own greedy tokens (fp32, CPU); generate agrees with itself
    assert full["agree_tokens"] == generate["agree_tokens"] == 4 and h2o["agree_tokens"] is None
    # the last step reads the prompt and the 3 tokens fed before it: 43 entries
    assert full["kv_bytes"] == full["kv_bytes_full"] == 43 * per_token
    assert h2o["kv_bytes"] == 16 * per_token  # the budget, per layer and head
    assert h2o["policy"] == "h2o:budget=16" and h2o["config"] == "h2o · 16/head"
    for row in (full, h2o):
        assert row["decode_path"] == "eager"  # no CUDA graphs on a CPU
        assert row["speedup"] == pytest.approx(generate["step_ms"] / row["step_ms"])
        assert 0 < row["step_ms"] < 1e3 * row["call_s"]
    assert "| transformers generate |" in out.stdout and "| full |" in out.stdout and "| 4/4 |" in out.stdout
    assert f"{before:.2f}, {after:.2f} ms/step before and after" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [(["--new-tokens", "1"], "--new-tokens"), (["--policies", "nosuch"], "nosuch")],
)
def test_bad_input_is_one_line(args, message):
    out = kvviz(*args, "--device", "cpu", timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("error:") and message in out.stderr and "Traceback" not in out.stderr


def test_drift_by_hand():
    # 20% of the faster timing: 10 -> 12 is within, 10 -> 12.1 is not, whichever came first
    assert bench.drift_warning("g", 10.0, 12.0) is None and bench.drift_warning("g", 12.0, 10.0) is None
    for before, after in ((10.0, 12.1), (12.1, 10.0)):
        warning = bench.drift_warning("g", before, after)
        assert warning and "busy" in warning and "faster, 10.00" in warning


def test_floor_by_hand():
    assert bench.bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert bench.bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert bench.bandwidth("NVIDIA H200") == 4.8e12
    assert bench.bandwidth("CPU") is None
    # 270 MB of bf16 weights and 50 MB of cache at 3.35 TB/s: 320e6 / 3.35e12 s
    assert bench.floor_ms(270_000_000, 50_000_000, 3.35e12) == pytest.approx(1e3 * 320e6 / 3.35e12)
    assert bench.floor_ms(1, 1, None) is None
