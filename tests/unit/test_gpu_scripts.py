"""The GPU scripts report failure: each step still runs and keeps its output, and the exit status
is non-zero when any step failed. Run here with stand-ins for ``python3`` and ``nvidia-smi`` that
fail on demand (the real ones run on the GPU host)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STUB_PYTHON = """#!/bin/sh
# fails (status 1) when its arguments contain $STUB_FAIL; prints what it was asked to run
echo "python3 $*"
case "$*" in
  *"$STUB_FAIL"*) [ -n "$STUB_FAIL" ] && { echo "1 failed"; exit 1; } ;;
esac
exit 0
"""


@pytest.fixture
def host(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"python3": STUB_PYTHON, "nvidia-smi": "#!/bin/sh\necho 'name, memory.total'\n"}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()

    def run(script, fail=""):
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", OUT=str(out), STUB_FAIL=fail)
        return subprocess.run(["bash", f"benchmarks/{script}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    return run, out


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_all.sh"])
def test_a_clean_run_exits_zero(host, script):
    run, out = host
    result = run(script)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "python3 -m pytest -q -p no:cacheprovider tests/gpu" in (out / "gpu_tests.txt").read_text()


@pytest.mark.parametrize(
    "script, fail",
    [
        ("gpu_check.sh", "tests/gpu"),  # a GPU test fails
        ("gpu_check.sh", "gpu_smoke.py"),
        ("gpu_check.sh", "kvviz bench"),
        ("gpu_all.sh", "paged_bench.py"),
        ("gpu_check.sh", "torch.cuda.is_available"),  # no CUDA at all
        ("gpu_all.sh", "tests/gpu"),
        ("gpu_all.sh", "known_results.py"),
        ("gpu_measure.sh", "sweep_bench.py"),
    ],
)
def test_a_failing_step_makes_the_script_fail(host, script, fail):
    run, out = host
    result = run(script, fail)
    assert result.returncode != 0, result.stdout
    if script == "gpu_measure.sh":  # the later steps still ran and kept their output
        assert (out / "quant_lab_bench.txt").exists()
    elif fail != "torch.cuda.is_available":
        assert (out / "bench.txt").exists()


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_a_benchmark_runs_from_a_checkout_without_an_installed_kvviz(script, tmp_path):
    """``python benchmarks/X.py`` as the README says, from another directory, with the site's
    packages on the path but no .pth file run (so no editable install of kvviz is found)."""
    import site
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    result = subprocess.run([sys.executable, "-S", str(ROOT / "benchmarks" / script), "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()
