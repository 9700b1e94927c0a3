"""``python -m kvviz sweep`` as a user runs it: a real subprocess, its CSV against the sweep core
run in this process, its passkey JSON against the key, and bad input as one line with exit 2."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from kvviz.sweep import run as sweep
from kvviz.record.examples import long_document, passkey_prompt


def kvviz(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "kvviz", "sweep", *args], capture_output=True, text=True, timeout=timeout)


def test_csv_equals_the_core_and_progress_goes_to_stderr(smollm):
    out = kvviz("--policy", "full", "--policy", "window", "--ratios", "0.5", "--example", "long",
                "--context", "24", "--continuation", "6", "--device", "cpu", "--csv", "-")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert list(rows[0])[:12] == sweep.PPL_COLUMNS
    settings = sweep.SweepSettings(policies=("full", "window"), ratios=(0.5,), text=long_document(), context=24, continuation=6)
    core = sweep.run(smollm.model, smollm.tokenizer, settings).rows
    assert [(r["policy"], r["ratio"], r["budget"]) for r in rows] == [("full", "", ""), ("window", "0.5", "12")]
    for got, want in zip(rows, core):
        assert float(got["ppl"]) == pytest.approx(want.ppl, rel=1e-5)
        assert float(got["kl_full"]) == pytest.approx(want.kl_full, abs=1e-5)
        assert float(got["top1_agree"]) == want.top1_agree
        assert int(got["kv_bytes"]) == want.kv_bytes and int(got["kv_bytes_full"]) == want.kv_bytes_full
    assert "[1/3] full cache (reference)" in out.stderr and "[3/3] window · 50%" in out.stderr


def test_passkey_json_has_the_grid(smollm):
    out = kvviz("--task", "passkey", "--policy", "full", "--depths", "0.5", "--lengths", "100", "--new-tokens", "10",
                "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    _, key = passkey_prompt(100, 0.5, seed=0)
    (row,) = result["rows"]
    assert (row["policy"], row["depth"], row["length"], row["found"]) == ("full", 0.5, 100, True)
    assert key in row["answer"] and result["settings"]["task"] == "passkey"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--policy", "nope", "--ratios", "0.1", "--example", "long"], "Unknown policy"),
        (["--policy", "h2o", "--ratios", "0.1,x", "--example", "long"], "--ratios"),
        (["--policy", "h2o", "--ratios", "0.1", "--budgets", "8", "--example", "long"], "not both"),
        (["--policy", "h2o", "--example", "long"], "give ratios or budgets"),
        (["--policy", "h2o", "--ratios", "0.1"], "--text-file FILE or --example NAME"),
        (["--policy", "h2o", "--ratios", "0.1", "--example", "poems"], "unknown example"),
        (["--policy", "full", "--text-file", "/no/such/file"], "No such file"),
        (["--policy", "full", "--example", "long", "--context", "many"], "invalid int value"),
        (["--ratios", "0.1", "--example", "long"], "--policy"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    out = kvviz(*args, "--device", "cpu")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: ")
