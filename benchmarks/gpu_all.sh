#!/usr/bin/env bash
# Everything measured on a GPU host in one call (after the stage steps):
# CUDA tests, `python -m kvviz bench`, attention explorer benchmark at 8k, known results, the sweep
# benchmark, paged vs contiguous decode.
# Every step runs; the exit status is non-zero when any of them failed.
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
quiet() { grep -v "Converting\|Loading weights\|clean_up" || true; }
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
bash benchmarks/gpu_check.sh --repeats 2 || status=1
python3 benchmarks/attention_bench.py --tokens 8192 --device cuda --out "$OUT/attention_bench.json" 2>&1 | quiet | tail -15 | tee "$OUT/attention_bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_all: attention benchmark failed"; status=1; }
python3 benchmarks/known_results.py --device cuda --out "$OUT/known_results.json" 2>&1 | quiet | tail -25 | tee "$OUT/known_results.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_all: known results failed"; status=1; }
python3 benchmarks/sweep_bench.py --device cuda --out "$OUT/sweep_bench.json" 2>&1 | quiet | tail -16 | tee "$OUT/sweep_bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_all: sweep benchmark failed"; status=1; }
python3 benchmarks/paged_bench.py --device cuda --out "$OUT/paged_bench.json" 2>&1 | quiet | tail -12 | tee "$OUT/paged_bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_all: paged benchmark failed"; status=1; }
[ "$status" -eq 0 ] || echo "gpu_all: FAILED (see above)"
exit $status
