#!/usr/bin/env bash
# On the GPU host, after the stage steps: the measurements beside the tests (gpu_check.sh runs those
# and the all-policy bench): the Live page's run per policy (and its next policy with the full
# cache's run kept), prefill scoring at 8k, the attention explorer at 8k, the attention overview at
# 1B's shape and 32k tokens, a decode step over several rows at once, known results, the sweep
# (one point at a time and on 4 lanes), a forced continuation read in chunks against step by step,
# whether the full cache's run repeats to the last bit, the
# fused blocks, compare, paged and quantization-lab benchmarks.
# Every step runs (each under its own time limit) and keeps its output under $OUT; the exit status
# is non-zero when any step failed. ONLY="bench_live sweep_bench" runs just those steps (to fit a
# call's time limit).
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
quiet() { grep -v "Converting\|Loading weights\|clean_up" || true; }
status=0
step() {  # step NAME SECONDS command...: run, keep the output in $OUT/NAME.txt, note a failure
    local name=$1 limit=$2
    shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
    timeout "$limit" "$@" 2>&1 | quiet | tail -40 | tee "$OUT/$name.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_measure: $name failed"; status=1; }
}
step bench_live 150 python3 -m kvviz bench --live --repeats 1 --policies full,h2o,snapkv,streaming_llm,kivi,quant --json "$OUT/bench_live.json"
step live_reuse 120 python3 benchmarks/live_reuse.py --device cuda --prompt-tokens 2048 --new-tokens 128 --out "$OUT/live_reuse.json"
step bench_8k 90 python3 -m kvviz bench --prompt-tokens 8184 --new-tokens 8 --repeats 3 --policies full,h2o,snapkv,tova --budget 1024 --json "$OUT/bench_8k.json"
step attention_bench 90 python3 benchmarks/attention_bench.py --tokens 8192 --device cuda --out "$OUT/attention_bench.json"
step overview_32k 150 python3 benchmarks/overview_bench.py --device cuda --dtype bfloat16 --tokens 32768 --layers 16 --repeats 2 --out "$OUT/overview_32k.json"
step batched_rows 90 python3 benchmarks/batched_rows.py --device cuda --prompt-tokens 1024 --rows 1,2,5,8 --out "$OUT/batched_rows.json"
step known_results 150 python3 benchmarks/known_results.py --device cuda --out "$OUT/known_results.json"
step sweep_bench 240 python3 benchmarks/sweep_bench.py --device cuda --lanes 1,4 --out "$OUT/sweep_bench.json"
step forced_chunks 120 python3 benchmarks/forced_chunks.py --device cuda --out "$OUT/forced_chunks.json"
step repeatability 90 python3 benchmarks/full_cache_repeatability.py --runs 4 --out "$OUT/full_cache_repeatability.json"
step fused_blocks 300 python3 benchmarks/fused_blocks.py --repeats 2 --out "$OUT/fused_blocks.json"
step compare_bench 90 python3 benchmarks/compare_bench.py --device cuda --long 2000 --out "$OUT/compare_bench.json"
step paged_bench 90 python3 benchmarks/paged_bench.py --device cuda --out "$OUT/paged_bench.json"
step quant_lab_bench 90 python3 benchmarks/quant_lab_bench.py --device cuda --tokens 2048 --out "$OUT/quant_lab_bench.json"
[ "$status" -eq 0 ] || echo "gpu_measure: FAILED (see above)"
exit $status
