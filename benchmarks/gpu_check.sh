#!/usr/bin/env bash
# On the GPU host, after the stage steps: the gpu tests, then the decode benchmark.
set -o pipefail
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
python3 benchmarks/gpu_smoke.py 2>&1 | grep -v "Converting\|Loading weights\|clean_up" | tee "$OUT/smoke.txt"
python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
python3 benchmarks/decode_bench.py --out "$OUT/decode_bench.json" "$@" 2>&1 | grep -v "Converting\|Loading weights\|clean_up" | tee "$OUT/decode_bench.txt"
