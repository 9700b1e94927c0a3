#!/usr/bin/env bash
# Everything measured on a GPU host in one go (after the stage steps): gpu_check.sh (smoke run, CUDA
# tests, `python -m kvviz bench` over every policy), then gpu_measure.sh (the other benchmarks).
# Every step runs; the exit status is non-zero when any of them failed.
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
bash benchmarks/gpu_check.sh --repeats 2 || status=1
bash benchmarks/gpu_measure.sh || status=1
[ "$status" -eq 0 ] || echo "gpu_all: FAILED (see above)"
exit $status
