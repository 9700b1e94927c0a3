#!/usr/bin/env bash
# On the GPU host, after the stage steps: the smoke run, the gpu tests, then `python -m kvviz bench`.
# Every step runs and keeps its output under $OUT; the exit status is non-zero when CUDA is
# missing or any step failed (a failing GPU test included).
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
quiet() { grep -v "Converting\|Loading weights\|clean_up" || true; }
status=0
if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to torch" | tee "$OUT/gpu_tests.txt"
    exit 1
fi
python3 benchmarks/gpu_smoke.py 2>&1 | quiet | tee "$OUT/smoke.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_check: smoke run failed"; status=1; }
python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_check: GPU tests failed"; status=1; }
python3 -m kvviz bench --json "$OUT/bench.json" "$@" 2>&1 | quiet | tee "$OUT/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_check: bench failed"; status=1; }
exit $status
