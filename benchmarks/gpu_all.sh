#!/usr/bin/env bash
# Everything measured on a GPU host in one call (after the stage steps):
# CUDA tests, decode benchmark, attention explorer benchmark at 8k, known results, the sweep benchmark,
# paged vs contiguous decode.
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
bash benchmarks/gpu_check.sh --repeats 2
python3 benchmarks/attention_bench.py --tokens 8192 --device cuda --out "$OUT/attention_bench.json" 2>&1 | grep -v "Converting\|Loading weights\|clean_up" | tail -15 | tee "$OUT/attention_bench.txt"
python3 benchmarks/known_results.py --device cuda --out "$OUT/known_results.json" 2>&1 | grep -v "Converting\|Loading weights\|clean_up" | tail -25 | tee "$OUT/known_results.txt"
python3 benchmarks/sweep_bench.py --device cuda --out "$OUT/sweep_bench.json" 2>&1 | grep -v "Converting\|Loading weights\|clean_up" | tail -16 | tee "$OUT/sweep_bench.txt"
python3 benchmarks/paged_bench.py --device cuda --out "$OUT/paged_bench.json" 2>&1 | grep -v "Converting\|Loading weights\|clean_up" | tail -12 | tee "$OUT/paged_bench.txt"
