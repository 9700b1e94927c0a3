"""Every measured number in README.md and docs/*.md is its committed results file's
(issue 24: 'Every number in the README and the docs comes from a committed results file (with its
date, machine and command), and a test checks that the text and the files agree').

NUMBERS holds one row per sentence: the words as the text writes them, with ``{}`` where a number
stands, the results file, and the numbers read from the file and formatted as the text writes them.
The guard then takes the rendered blocks (speed tables, the widget-maxima paragraph, the
faithfulness table: each checked by its own test) and every sentence of NUMBERS out of the text,
and fails on any number with a unit left over (``12 ms``, ``3.4 s``, ``7 MiB``, ``55%``, ``2×``...)
that ALLOWED does not explain: a hand-typed measurement has no place to hide. UNSOURCED names
sections measured before results files were kept, until their benchmarks are rerun into
benchmarks/results/ (none now). No model, no torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = {"README.md": ROOT / "README.md"} | {p.name: p for p in sorted((ROOT / "docs").glob("*.md"))}  # a new doc is guarded too
MiB, GiB = 2**20, 2**30

# Files written before results carried their date, machine and command: the date the file was
# committed (git log), the command the docs give; the machine is in the file (card/device) or, for
# the two that only say "cuda", the card the README names.
PROVENANCE = {
    "attention_bench_h100_8k.json": ("2026-11-28", "python benchmarks/attention_bench.py --tokens 8192"),
    "bench_h100.json": ("2026-11-28", "bash benchmarks/gpu_check.sh --repeats 2"),
    "bench_live_h100.json": ("2026-11-28", "python -m kvviz bench --live"),
    "bench_8k_h100.json": ("2026-11-28", "python -m kvviz bench --prompt-tokens 8184 --new-tokens 8 --budget 1024"),
    "bench_h200.json": ("2026-12-04", "python -m kvviz bench --prompt-tokens 2048 --new-tokens 128 --repeats 3"),
    "known_results_h100.json": ("2026-11-28", "python benchmarks/known_results.py", "one NVIDIA H100"),
    "known_results_h200.json": ("2026-12-03", "python benchmarks/known_results.py", "one NVIDIA H200"),
    "multi_gpu_h200x2.json": ("2026-11-28", "python benchmarks/multi_gpu.py --out multi_gpu.json"),
    "page_vs_cli_cpu.json": ("2026-11-28", "python benchmarks/page_vs_cli.py"),
    "sweep_bench_h100.json": ("2026-11-28", "python benchmarks/sweep_bench.py"),
    "load_test_cpu.json": ("", "python benchmarks/load_test.py"),  # its date is in the file
    "bench_live_h200.json": ("2026-12-04", "python -m kvviz bench --live --repeats 1 --policies full,h2o,snapkv,streaming_llm,kivi,quant,tova,knorm"),
    "bench_8k_h200.json": ("2026-12-04", "python -m kvviz bench --prompt-tokens 8128 --new-tokens 64 --repeats 2 --policies full,h2o,snapkv,tova --budget 1024"),
}
MACHINE_KEYS = ("machine", "card", "cards", "gpu", "device_name")


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def f(fmt: str, *values) -> list[str]:
    return [format(v, fmt) for v in values]


def span(fmt: str, values) -> str:
    lo, hi = f"{min(values):{fmt}}", f"{max(values):{fmt}}"
    return lo if lo == hi else f"{lo}-{hi}"


def rows(d: dict) -> dict:
    return {r["config"]: r for r in d["rows"]}


def rows_by_policy(d: dict) -> dict:
    return {r["policy"]: r for r in d["rows"]}


def kvviz_rows(d: dict) -> list[dict]:
    return [r for r in d["rows"] if not r["config"].startswith("transformers")]


def generate_steps() -> list[float]:
    """Dynamic generate's step in every committed 2,048-token bench table."""
    return [rows(load(n))["transformers generate"]["step_ms"] for n in ("bench_h200.json", "bench_h100.json", "bench_live_h100.json")]


def h100_step_drift() -> float:
    """How far the graph-replayed steps moved between the two H100 runs (largest share)."""
    a, b = rows(load("bench_h100.json")), rows(load("bench_live_h100.json"))
    return max(abs(b[c]["step_ms"] / a[c]["step_ms"] - 1) for c in b if c in a and b[c]["decode_path"] == "graph")


def live(config: str) -> list[str]:
    r = rows(load("bench_live_h100.json"))[config]
    return f(".2f", r["call_s"], r["live_s"])


def scoring(d: dict, policy: str) -> dict:
    return next(r for r in d["rows"] if r["policy"] == policy)


def long_run(d: dict, policy: str) -> dict:
    return next(r for r in d["runs"] if r["policy"] == policy)


def prefill_added(config: str) -> float:
    r = rows(load("bench_8k_h100.json"))
    return r[config]["prefill_ms"] - r["full"]["prefill_ms"]


def times_floor(configs=None, names=("bench_h100.json", "bench_live_h100.json")) -> list[float]:
    return [r["step_ms"] / r["floor_ms"] for n in names for r in load(n)["rows"] if configs is None or r["config"] in configs]


EVERY_STEP = {"h2o · 25%", "knorm · 25%", "lfu · 25%", "lru · 25%", "merge · 25%", "sparse_pattern · 25%", "streaming_llm · 25%",
              "tova · 25%", "window · 25%"}  # selectors that score and evict at every decode step, on the CUDA-graph path
SCORING_STEP = ("h2o · 25%", "streaming_llm · 25%", "quant", "kivi")  # the Live-run paragraph's four


def multi(where: str, policy: str) -> float:
    d = load("multi_gpu_h200x2.json")
    return next(r["median_step_ms"] for r in d["runs"] if r["where"] == where and r["policy"] == policy)


def ppl(name: str, policy: str) -> float:
    return {r["policy"]: r["perplexity"] for r in load(name)["perplexity"]}[policy]


def sweep_ppl(policy: str) -> float:
    return next(r["ppl"] for r in load("sweep_bench_h100.json")["rows"] if r["policy"] == policy and r["ratio"] == 0.1)


def dedup(share: float) -> dict:
    return next(r for r in load("dedup_example_cpu.json")["result"]["recompute"] if r["share"] == share)


def cell(stats: dict, fmt: str = ".1f") -> str:
    """A median with its min-max in brackets, as the tables write them."""
    return f"{stats['median']:{fmt}} ({stats['min']:{fmt}}-{stats['max']:{fmt}})"


def median_spread(values: list[float]) -> dict:
    values = sorted(values)
    mid = len(values) // 2
    return {"median": values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2, "min": values[0], "max": values[-1]}


def sweep_runs(d: dict, config: str, key: str) -> dict:
    return median_spread([r[key] for r in d["runs"] if r["config"] == config])


def up(d: dict, root: str, kind: str, key: str, unit: str = " s") -> str:
    """A start-up median with its min-max in brackets: '4.28 s (3.46-6.10)'."""
    m = d[root][kind][key]
    return f"{m['median']:.2f}{unit} ({m['min']:.2f}-{m['max']:.2f})"


def up_ratio(d: dict, kind: str, key: str) -> str:
    return f"{d['A/B'][kind][key]['median']:.2f}"


def paged_waste(key: str) -> dict:
    return next(s for s in load("paged_scenarios_cpu.json")["scenarios"] if s["scenario"] == key)


def found(d: dict, *series: str) -> list[str]:
    """How many of the passkey grid's runs of these series found the key, of how many."""
    runs = [r for r in d["rows"] if r["series"] in series]
    return [str(sum(r["found"] for r in runs)), str(len(runs) // len(series))]


def key_error(d: dict, axis: str, bits: int, group: int = 32) -> float:
    return next(r["key error"] for r in d["grid"][0]["rows"] if (r["axis"], r["bits"], r["group"]) == (axis, bits, group))


NUMBERS = [
    # README: Attention explorer
    ("README.md", "takes {} s and {} MiB of extra GPU memory", "attention_bench_h100_8k.json",
     lambda d: [f"{d['total_seconds']:.2f}", f"{d['total_extra_bytes'] / MiB:.0f}"]),
    ("README.md", "1,024 tokens took {} s ({} CPU s", "attention_bench_cpu_1k.json",
     lambda d: [f"{d['total_seconds']:.1f}", f"{d['steps']['overview']['cpu_seconds'] + d['steps']['detail']['cpu_seconds']:.1f}"]),
    # README: Live policy, page against CLI
    ("README.md", "within {}× the time of the same work through the CLI", "page_vs_cli_cpu.json",
     lambda d: [span(".2f", [r["ratio"] for r in d["runs"]])]),
    # README: Paged cache, the prefix scenario and the mixed lengths scenario
    ("README.md", "wastes {}% of it on the prefix scenario, exact reservations {}%, blocks of 8 tokens {}%", "paged_scenarios_cpu.json",
     lambda d: (lambda w: [f"{100 * w['reserve_max']:.1f}", f"{100 * w['exact']:.0f}", f"{100 * w['paged']['8']:.1f}"])(paged_waste("prefix")["waste"])),
    ("README.md", "a {}-token question beside a {}-token document, a static batch wastes {}% against {}% for blocks of 16", "paged_scenarios_cpu.json",
     lambda d: [str(n) for n in paged_waste("mixed")["prompt_tokens"]]
     + f(".1f", 100 * paged_waste("mixed")["waste"]["static_batch"], 100 * paged_waste("mixed")["waste"]["paged"]["16"])),
    # README: Quantization lab
    ("README.md", "On SmolLM2's layer {} (the first {} tokens of the built-in essay, groups of {}, CPU, float32) the keys' error is {} / {} / {}% per channel against {} / {} / {}% per token at 8 / 4 / 2 bits",
     "quant_lab_bench_cpu.json",
     lambda d: [str(d["grid"][0]["layer"]), str(d["tokens"]), "32"] + [f"{100 * key_error(d, axis, bits):.1f}" for axis in ("per_channel", "per_token") for bits in (8, 4, 2)]),
    # README: Dedup
    ("README.md", "(SmolLM2, CPU, float32, {} tokens, a {}-token passage twice): key deviation {} at layer 0 (rounding), {} at layer 1, up to {} (layer {}); values up to {}; {}% of the full cache's bytes with KL {} nats, {}% and {} with half the copied tokens recomputed, {}% and {} with all of them; top-1 {}/{} throughout",
     "dedup_example_cpu.json",
     lambda d: (lambda r: [str(r["prompt_tokens"]), str(r["copied_tokens"]), f"{r['key_deviation'][0]:.0e}", f"{r['key_deviation'][1]:.2f}",
                           f"{max(r['key_deviation']):.2f}", str(r["key_deviation"].index(max(r["key_deviation"]))), f"{max(r['value_deviation']):.2f}",
                           f"{100 * dedup(0.0)['kv_bytes'] / r['full_bytes']:.1f}", f"{dedup(0.0)['kl_mean']:.2g}",
                           f"{100 * dedup(0.5)['kv_bytes'] / r['full_bytes']:.1f}", f"{dedup(0.5)['kl_mean']:.2g}",
                           f"{100 * dedup(1.0)['kv_bytes'] / r['full_bytes']:.0f}", f"{dedup(1.0)['kl_mean']:.0e}",
                           str(round(min(x["top1_agreement"] for x in r["recompute"]) * len(r["next_tokens"]))), str(len(r["next_tokens"]))])(d["result"])),
    # README: query-agnostic runs
    ("README.md", "On the {}-token passkey grid ({} filler tokens, depths {}, ratio {}, SmolLM2 on the CPU), `snapkv:window=8` finds the key at {} of {} depths with the question in view and at {} of {} before it (\"{}\" twice): its window votes with the question; `snapkv`, `h2o` and `keydiff` find it {} of {} either way",
     "passkey_question_after_cpu.json",
     lambda d: [str(d["rows"][0]["prompt_tokens"]), str(d["rows"][0]["length"]), "/".join(sorted({str(r["depth"]) for r in d["rows"]})), str(d["rows"][0]["ratio"]),
                *found(d, "snapkv:window=8"), *found(d, "snapkv:window=8 · question after"),
                "6049" if sum("6049." in r["answer"] for r in d["rows"] if r["series"] == "snapkv:window=8 · question after") == 2 else "not twice",
                *found(d, "snapkv", "h2o", "keydiff", "snapkv · question after", "h2o · question after", "keydiff · question after")]),
    # README: known results (the perplexities themselves: tests/unit/test_readme_known_numbers.py)
    ("README.md", "plain window {} ({}×)", "known_results_h100.json",
     lambda d: [f"{ppl('known_results_h100.json', 'window'):.1f}", f"{ppl('known_results_h100.json', 'window') / ppl('known_results_h100.json', 'full'):.1f}"]),
    ("README.md", "({} policies × {} ratios, {} prompt tokens + {} forced, `benchmarks/sweep_bench.py`, H100): perplexity at 10% of the cache: full {}, window {}, streaming_llm {}, h2o {}, tova {}, knorm {}, lru {}, snapkv {}, pyramidkv {}.",
     "sweep_bench_h100.json",
     lambda d: [str(len(d["policies"])), str(len(d["ratios"])), f"{d['context']:,}", str(d["continuation"]), f"{d['reference']['ppl']:.2f}"]
     + [f"{sweep_ppl(p):.3g}" for p in ("window", "streaming_llm", "h2o", "tova", "knorm", "lru", "snapkv", "pyramidkv")]),
    # README: Speed
    ("README.md", "On one H200 ({}, SmolLM2, {}-token prompt + {} greedy tokens, median of {}, {}, `benchmarks/results/bench_h200.json`)", "bench_h200.json",
     lambda d: ["bf16" if d["dtype"] == "bfloat16" else d["dtype"], f"{d['prompt_tokens']:,}", str(d["new_tokens"]), str(d["repeats"]), PROVENANCE["bench_h200.json"][0]]),
    ("README.md", "Rerun on an H200 on {}, after SnapKV", "known_results_h200.json", lambda d: [PROVENANCE["known_results_h200.json"][0]]),
    ("README.md", "Measured on two {}s (`benchmarks/results/multi_gpu_h200x2.json`)", "multi_gpu_h200x2.json",
     lambda d: [d["cards"][0].removeprefix("NVIDIA ")] if len(set(d["cards"])) == 1 and len(d["cards"]) == 2 else ["?"]),
    ("README.md", "the full cache faster than kvviz decodes any policy ({}×; the full cache {}×)", "bench_h200.json",
     lambda d: [span(".2f", [r["speedup_static"] for r in kvviz_rows(d) if r["decode_path"] == "graph"]), f"{rows(d)['full']['speedup_static']:.2f}"]),
    ("README.md", "dynamic `generate`'s after {} of {}, and kvviz's full cache after {}.", "bench_h200.json",
     lambda d: [str(rows(d)["transformers generate, static cache (compiled)"]["agree_tokens"]), str(d["new_tokens"]), str(rows(d)["full"]["agree_tokens"])]),
    ("README.md", "moves with the host's CPU ({} ms per step for the same run in the committed H100 and H200 tables)", "bench_h100.json",
     lambda d: [span(".1f", generate_steps())]),
    ("README.md", "Eager decoding moves with the host's CPU ({}× between hosts and hours)", "bench_live_h100.json",
     lambda d: [f"{max(generate_steps()) / min(generate_steps()):.0f}"]),
    # README: Models larger than one GPU
    ("README.md", "({} B parameters, {} GiB in bf16, each GPU capped at {} GiB) splits into layers {}-{} and {}-{}, {} GiB of weights and half the KV cache on each GPU (full cache, {}-token prompt: {} MiB per GPU). Split, kvviz decodes eagerly at {} ms per step against {} ms for `generate` on the same split model",
     "multi_gpu_h200x2.json",
     lambda d: [f"{sum(d['weights_by_device'].values()) / 2 / 1e9:.2f}", f"{sum(d['weights_by_device'].values()) / GiB:.1f}", f"{d['max_gpu_memory_bytes'] / GiB:.1f}",
                str(d["layers_by_device"]["cuda:0"][0]), str(d["layers_by_device"]["cuda:0"][-1]), str(d["layers_by_device"]["cuda:1"][0]),
                str(d["layers_by_device"]["cuda:1"][-1]), f"{d['weights_by_device']['cuda:0'] / GiB:.1f}", f"{d['prompt_tokens']:,}",
                f"{d['runs'][0]['device_memory']['cuda:0']['kv_bytes'] / MiB:.1f}",
                span(".0f", [r["median_step_ms"] for r in d["runs"] if r["where"] == "split"]), f"{d['generate_split_step_ms']:.0f}"]),
    ("README.md", "on one GPU the same model replays from graphs at {} ms per step.", "multi_gpu_h200x2.json",
     lambda d: [span(".1f", [r["median_step_ms"] for r in d["runs"] if r["where"] == "one GPU"])]),
    # README: shared server
    ("README.md", "(about {} minutes on 2 CPU cores;", "load_test_cpu.json", lambda d: [f"{d['wall_s'] / 60:.0f}"]),
    ("README.md", "opens {} headless Chromium sessions on the Live page and has them press Run together, twice ({} new tokens, on the CPU)",
     "load_test_cpu.json", lambda d: [str(d["sessions"]), str(d["new_tokens"])]),
    # PERFORMANCE: method and the H200 table
    ("PERFORMANCE.md", "so it moves with the host CPU ({}x between GPU hosts and hours)", "bench_live_h100.json",
     lambda d: [f"{max(generate_steps()) / min(generate_steps()):.0f}"]),
    ("PERFORMANCE.md", "Measured {} on one {} ({}), one process, with `python -m kvviz bench --prompt-tokens {} --new-tokens {} --repeats {}` (every policy)",
     "bench_h200.json",
     lambda d: [PROVENANCE["bench_h200.json"][0], d["card"], "bf16" if d["dtype"] == "bfloat16" else d["dtype"], str(d["prompt_tokens"]), str(d["new_tokens"]), str(d["repeats"])]),
    ("PERFORMANCE.md", "Measured {} on one {} ({}) with `bash benchmarks/gpu_check.sh --repeats {}`", "bench_h100.json",
     lambda d: [PROVENANCE["bench_h100.json"][0], d["card"], "bf16" if d["dtype"] == "bfloat16" else d["dtype"], str(d["repeats"])]),
    ("PERFORMANCE.md", "`python benchmarks/load_test.py` (issue 21), {}, on this project's CPU machine", "load_test_cpu.json", lambda d: [d["date"].split()[0]]),
    ("PERFORMANCE.md", "(H100 SXM {} TB/s, H200 {} TB/s)", "bench_h200.json",
     lambda d: [f"{load('bench_h100.json')['bandwidth_bytes_s'] / 1e12:.2f}", f"{d['bandwidth_bytes_s'] / 1e12:.1f}"]),
    ("PERFORMANCE.md", "{}× for every policy, all {} on the CUDA-graph path, {}× for the full cache. The two baselines drifted by {}% (dynamic) and {}% (static)",
     "bench_h200.json",
     lambda d: [span(".2f", [r["speedup_static"] for r in kvviz_rows(d)]), str(sum(r["decode_path"] == "graph" for r in kvviz_rows(d))),
                f"{rows(d)['full']['speedup_static']:.2f}"] + [f"{100 * (1 - min(v) / max(v)):.0f}" for v in d["baseline_ms"].values()]),
    ("PERFORMANCE.md", "Since the previous H200 table `random` ({} ms per step; it decoded eagerly there)", "bench_h200.json",
     lambda d: [f"{rows(d)['random · 25%']['step_ms']:.1f}"]),
    ("PERFORMANCE.md", "greedy tokens leave dynamic `generate`'s after {} of {}, and kvviz's full cache's (CUDA graph of the eager step) after {}.", "bench_h200.json",
     lambda d: [str(rows(d)["transformers generate, static cache (compiled)"]["agree_tokens"]), str(d["new_tokens"]), str(rows(d)["full"]["agree_tokens"])]),
    ("PERFORMANCE.md", "The `× generate` factors ({}× here)", "bench_h200.json",
     lambda d: [span(".1f", [r["speedup"] for r in kvviz_rows(d) if r["decode_path"] == "graph"])]),
    ("PERFORMANCE.md", "moves with the host CPU ({} ms here, {} and {} ms on busy H100 hosts below)", "bench_h200.json",
     lambda d: [span(".1f", d["baseline_ms"]["transformers generate"])] + f(".1f", *generate_steps()[1:])),
    # PERFORMANCE: the H100 tables
    ("PERFORMANCE.md", "its `generate` ran on a busy host ({} ms per step)", "bench_h100.json",
     lambda d: [f"{rows(d)['transformers generate']['step_ms']:.1f}"]),
    ("PERFORMANCE.md", "and `generate` with it ({} ms against {} ms per step), while the graph-replayed steps moved by {}% at most",
     "bench_live_h100.json", lambda d: f(".1f", *generate_steps()[:0:-1]) + [f"{100 * h100_step_drift():.0f}"]),
    ("PERFORMANCE.md", "the scoring a policy adds is its prefill minus the full cache's ({} ms, the model's own forward)", "bench_8k_h100.json",
     lambda d: [f"{rows(d)['full']['prefill_ms']:.1f}"]),
    # PERFORMANCE: what the numbers say
    ("PERFORMANCE.md", "but `merge` ({}× in the first; it is not in the second) and `random` (eager, {}×). On the H200, whose `generate` was faster, {} of {} policies met it",
     "bench_h100.json",
     lambda d: [f"{rows(d)['merge · 25%']['speedup']:.1f}", f"{rows(d)['random · 25%']['speedup']:.1f}",
                str(sum(r["speedup"] >= 4 for r in kvviz_rows(load("bench_h200.json")))), str(len(kvviz_rows(load("bench_h200.json"))))]),
    ("PERFORMANCE.md", "Met by `full` ({} s / {} s) and `snapkv` ({} s / {} s)", "bench_live_h100.json", lambda d: live("full") + live("snapkv · 25%")),
    ("PERFORMANCE.md", "(`h2o` {} s / {} s, `streaming_llm` {} s / {} s) nor by the quantizing stores (`quant` {} s / {} s, `kivi` {} s / {} s). Their replayed steps cost {} ms, {}× a full cache's {} ms",
     "bench_live_h100.json",
     lambda d: live("h2o · 25%") + live("streaming_llm · 25%") + live("quant") + live("kivi")
     + [span(".0f", [rows(d)[c]["step_ms"] for c in SCORING_STEP]), span(".0f", [rows(d)[c]["step_ms"] / rows(d)["full"]["step_ms"] for c in SCORING_STEP]),
        f"{rows(d)['full']['step_ms']:.0f}"]),
    ("PERFORMANCE.md", "SnapKV added {} ms ({} against {} ms), TOVA {} ms, and H2O {} ms", "bench_8k_h100.json",
     lambda d: [f"{prefill_added('snapkv · 1024/head'):.0f}", f"{rows(d)['snapkv · 1024/head']['prefill_ms']:.1f}", f"{rows(d)['full']['prefill_ms']:.1f}",
                f"{prefill_added('tova · 1024/head'):.0f}", f"{prefill_added('h2o · 1024/head'):.0f}"]),
    *[("PERFORMANCE.md", words, "prefill_scoring_h200.json", numbers) for words, numbers in [
        ("| full | {} | | |", lambda d: [f"{scoring(d, 'full')['prefill_ms']:.1f}"]),
        *[(f"| {p} | {{}} | {{}} | {{}} (+{{}}) |", lambda d, p=p: f(".1f", *(scoring(d, p)[k] for k in ("prefill_ms", "added_ms", "chunked_prefill_ms", "chunked_added_ms"))))
          for p in ("h2o", "observed_attention")],
        *[(f"| {p} | {{}} | {{}} | |", lambda d, p=p: f(".1f", scoring(d, p)["prefill_ms"], scoring(d, p)["added_ms"])) for p in ("snapkv", "tova")],
        ("but for {}% of them for H2O", lambda d: [f"{100 * (1 - scoring(d, 'h2o')['kept_agreement']):.4f}"]),
        ("SmolLM2 bf16, {} tokens, median of {}", lambda d: [f"{d['tokens']:,}", str(d["repeats"])]),
    ]],
    *[("PERFORMANCE.md", words, "bench_live_h200.json", numbers) for words, numbers in [
        ("The dynamic baseline moved {}x between its two timings", lambda d: [f"{max(d['baseline_ms']['transformers generate']) / min(d['baseline_ms']['transformers generate']):.1f}"]),
        ("met by `full` ({} s) only", lambda d: [f"{rows(d)['full']['live_s']:.2f}"]),
        ("quantizing stores, take {} s: three decodes of {} ms steps. `snapkv` ({} s)", lambda d: [
            span(".2f", [r["live_s"] for r in kvviz_rows(d) if r["config"] not in ("full", "snapkv · 25%")]),
            span(".1f", [r["step_ms"] for r in kvviz_rows(d) if r["config"] not in ("full", "snapkv · 25%")]),
            f"{rows(d)['snapkv · 25%']['live_s']:.2f}"]),
        ("At 2k both followed it for {} of {} in this run", lambda d: [str(rows(d)["full"]["agree_tokens"]), str(d["new_tokens"])]),
    ]],
    ("PERFORMANCE.md", "static cache follows dynamic `generate`'s greedy tokens for {} of {} at 8k, and kvviz's full cache for {} of {}", "bench_8k_h200.json",
     lambda d: [str(rows(d)["transformers generate, static cache (compiled)"]["agree_tokens"]), str(d["new_tokens"]), str(rows(d)["full"]["agree_tokens"]), str(d["new_tokens"])]),
    ("PERFORMANCE.md", "the static cache {} of {} and kvviz's full cache {} in the all-policy table above", "bench_h200.json",
     lambda d: [str(rows(d)["transformers generate, static cache (compiled)"]["agree_tokens"]), str(d["new_tokens"]), str(rows(d)["full"]["agree_tokens"])]),
    *[("PERFORMANCE.md", words, "long_context_h200_before.json", numbers) for words, numbers in [
        ("(1,024 at 32k: {} GiB in the first run of this benchmark)", lambda d: [f"{d['overview']['extra_peak_bytes'] / GiB:.1f}"]),
        ("; {} s before. The per-head", lambda d: [f"{d['overview']['seconds']:.1f}"]),
    ]],
    ("PERFORMANCE.md", "which cut the memory by {}x and cost {}% more time", "long_context_h200.json", lambda d: [
        f"{load('long_context_h200_before.json')['overview']['extra_peak_bytes'] / d['overview']['extra_peak_bytes']:.1f}",
        f"{100 * (d['overview']['seconds'] / load('long_context_h200_before.json')['overview']['seconds'] - 1):.0f}"]),
    *[("PERFORMANCE.md", words, "long_context_h200.json", numbers) for words, numbers in [
        *[(f"| {p} | graph | {{}} | {{}} | {{}} | {{}} MiB | {{}} GiB |", lambda d, p=p: [
            f"{long_run(d, p)['prefill_s']:.2f}", f"{long_run(d, p)['median_step_ms']:.2f}", f"{long_run(d, p)['whole_call_s']:.2f}",
            f"{long_run(d, p)['kv_bytes'] / MiB:,.0f}", f"{long_run(d, p)['extra_peak_bytes'] / GiB:.2f}"]) for p in ("full", "snapkv", "h2o", "streaming_llm")],
        ("prefill included, within {} s", lambda d: [f"{max(r['whole_call_s'] for r in d['runs']):.2f}"]),
        ("scoring (the fused column sums above) costs {} s at 32k", lambda d: [f"{long_run(d, 'h2o')['prefill_s'] - long_run(d, 'full')['prefill_s']:.2f}"]),
        ("the {} token records in {} s; the token view draws at most {} of them", lambda d: [
            f"{long_run(d, 'snapkv')['views']['tokens']:,}", f"{long_run(d, 'snapkv')['views']['token_records_s']:.2f}", f"{long_run(d, 'snapkv')['views']['token_view_chips']:,}"]),
        ("builds in {} s but is {} MiB of JSON for the browser, the retention map {} s and {} MiB, the occupancy chart {} s", lambda d: [
            f"{long_run(d, 'snapkv')['views']['token_map_s']:.2f}", f"{long_run(d, 'snapkv')['views']['token_map_json_bytes'] / MiB:.1f}",
            f"{long_run(d, 'snapkv')['views']['retention_steps_s']:.2f}", f"{long_run(d, 'snapkv')['views']['retention_steps_json_bytes'] / MiB:.1f}",
            f"{long_run(d, 'snapkv')['views']['occupancy_s']:.2f}"]),
        ("not interactive at this size: {} s, with {} GiB of extra GPU memory", lambda d: [f"{d['overview']['seconds']:.1f}", f"{d['overview']['extra_peak_bytes'] / GiB:.1f}"]),
        ("a prompt of {} random token ids and {} new tokens, a budget of {} entries", lambda d: [f"{d['prompt_tokens']:,}", str(d["new_tokens"]), f"{long_run(d, 'snapkv')['budget']:,}"]),
        ("its output matrix apart from the embedding: {}B parameters", lambda d: [f"{d['parameters'] / 1e9:.1f}"]),
    ]],
    ("PERFORMANCE.md", "from every prompt query ({} × {} per head", "bench_8k_h100.json", lambda d: [f"{d['prompt_tokens']:,}"] * 2),
    ("PERFORMANCE.md", "must read {} MB of weights and the cache it holds: {} ms at {} TB/s. `full` replayed is {}× that floor, selectors that evict at every step {}×, `generate` {}×",
     "bench_h100.json",
     lambda d: [f"{d['weight_bytes'] / 1e6:.0f}", span(".3f", [r["floor_ms"] for n in ("bench_h100.json", "bench_live_h100.json") for r in load(n)["rows"]]),
                f"{d['bandwidth_bytes_s'] / 1e12:.2f}", span(".0f", times_floor({"full"})), span(".0f", times_floor(EVERY_STEP, ("bench_h100.json",))),
                span(".0f", times_floor({"transformers generate"}))]),
    ("PERFORMANCE.md", "on one GPU, replayed from graphs, full {} ms per step, h2o {}, snapkv {}, quant {}, at a {}-token prompt", "multi_gpu_h200x2.json",
     lambda d: f(".1f", *(multi("one GPU", p) for p in ("full", "h2o", "snapkv", "quant"))) + [f"{d['prompt_tokens']:,}"]),
    ("PERFORMANCE.md", "kvviz decodes eagerly: full {} ms, h2o {} ms per step, against {} ms for `generate`", "multi_gpu_h200x2.json",
     lambda d: f(".0f", multi("split", "full"), multi("split", "h2o"), d["generate_split_step_ms"])),
    ("PERFORMANCE.md", "overview of every layer and head {} s, one head's detail {} s, {} MiB of extra GPU memory", "attention_bench_h100_8k.json",
     lambda d: f(".2f", d["steps"]["overview"]["seconds"], d["steps"]["detail"]["seconds"]) + [f"{d['total_extra_bytes'] / MiB:.0f}"]),
    # PERFORMANCE: fused blocks and lanes
    ("PERFORMANCE.md", "**The fused blocks took {} s** to build from inductor's disk cache; the static cache's first call compiled in {} s", "fused_blocks_h200.json",
     lambda d: f(".1f", d["fused_build_s"], d["static_compile_s"])),
    ("PERFORMANCE.md", "`generate` with the dynamic cache {}/{} ms/step and with the compiled static cache {}/{} ms/step", "fused_blocks_h200.json",
     lambda d: f(".1f", *d["baselines_ms"]["generate dynamic"]) + f(".2f", *d["baselines_ms"]["generate static compiled"])),
    ("PERFORMANCE.md", "full and h2o left the unfused run's greedy tokens after {} and {} of 128 tokens", "fused_blocks_h200.json",
     lambda d: [str(r["agree"]) for r in d["rows"] if r["policy"] in ("full", "h2o:ratio=0.25")]),
    ("PERFORMANCE.md", "**At or below transformers' compiled static cache** ({} ms/step before and after)", "bench_live_fused_h200.json",
     lambda d: [span(".2f", d["baseline_ms"]["transformers generate, static cache (compiled)"])]),
    ("PERFORMANCE.md", "full at {}× its speed (even), snapkv at {}× (faster)", "bench_live_fused_h200.json",
     lambda d: f(".2f", rows(d)["full"]["speedup_static"], rows(d)["snapkv · 25%"]["speedup_static"])),
    ("PERFORMANCE.md", "every step (h2o {} ms, kivi {} ms)", "bench_live_fused_h200.json",
     lambda d: f(".2f", rows(d)["h2o · 25%"]["step_ms"], rows(d)["kivi"]["step_ms"])),
    ("PERFORMANCE.md", "full {} s and snapkv {} s: within 1.5 s, the goal;", "bench_live_fused_h200.json",
     lambda d: f(".2f", rows(d)["full"]["live_s"], rows(d)["snapkv · 25%"]["live_s"])),
    ("PERFORMANCE.md", "h2o {} s and kivi {} s, not within it", "bench_live_fused_h200.json",
     lambda d: f(".2f", rows(d)["h2o · 25%"]["live_s"], rows(d)["kivi"]["live_s"])),
    # PERFORMANCE: one entry in, one out, in place
    ("PERFORMANCE.md", "**At or below transformers' compiled static cache** ({} and {} ms/step before and after the\n  rows; ratios use the faster): full {}×, snapkv {}×, knorm {}×, streaming_llm {}×.", "bench_live_inplace_h200.json",
     lambda d: f(".2f", *d["baseline_ms"]["transformers generate, static cache (compiled)"]) + f(".2f", *(rows(d)[c]["speedup_static"] for c in (
         "full", "snapkv · 25%", "knorm · 25%", "streaming_llm · 25%")))),
    ("PERFORMANCE.md", "Below it: quant {}×, tova {}×, kivi {}×, h2o {}× ({} ms), quest {}× ({} ms).", "bench_live_inplace_h200.json",
     lambda d: f(".2f", rows(d)["quant"]["speedup_static"], rows(d)["tova · 25%"]["speedup_static"], rows(d)["kivi"]["speedup_static"],
                 rows(d)["h2o · 25%"]["speedup_static"], rows(d)["h2o · 25%"]["step_ms"], rows(d)["quest"]["speedup_static"], rows(d)["quest"]["step_ms"])),
    ("PERFORMANCE.md", "h2o took {} ms, streaming_llm {} ms and\n    knorm {} ms.", "bench_live_steps_h200.json",
     lambda d: f(".2f", *(rows(d)[c]["step_ms"] for c in ("h2o · 25%", "streaming_llm · 25%", "knorm · 25%")))),
    ("PERFORMANCE.md", "full {} s, snapkv {} s, quant {} s and\n  knorm {} s. Just past it: tova {} s, streaming_llm {} s and kivi {} s. Not met:\n  h2o {} s and quest {} s.",
     "bench_live_inplace_h200.json", lambda d: f(".2f", *(rows(d)[c]["live_s"] for c in ("full", "snapkv · 25%", "quant", "knorm · 25%")))
     + f(".3f", rows(d)["tova · 25%"]["live_s"]) + f(".2f", *(rows(d)[c]["live_s"] for c in ("streaming_llm · 25%", "kivi", "h2o · 25%", "quest")))),
    ("PERFORMANCE.md", "with the static cache at {} ms", "step_kernels_h200.json", lambda d: [span(".2f", d["static_ms"])]),
    *[("PERFORMANCE.md", f"| {name} | {{}} | {{}} | {{}} |", "step_kernels_h200.json",
       lambda d, p=policy: [format(rows_by_policy(d)[p]["ms_per_step"], ".2f"), format(round(rows_by_policy(d)[p]["kernels_per_step"]), ","),
                            format(round(rows_by_policy(d)[p]["gpu_us_per_step"]), ",")])
      for name, policy in (("full", "full"), ("h2o", "h2o:ratio=0.25"), ("tova", "tova:ratio=0.25"), ("knorm", "knorm:ratio=0.25"), ("quest", "quest"))],
    ("PERFORMANCE.md", "in one Triton kernel, {} µs per layer); then the float32 matrix\n  product of its scores ({} µs per layer)", "step_kernels_h200.json",
     lambda d: [format(next(t["us"] for t in rows_by_policy(d)["h2o:ratio=0.25"]["top"] if t["kernel"].startswith(k)) / 30, ".0f")
                for k in ("triton_red_fused__softmax", "sm80_xmma_gemm_f32f32")]),
    ("README.md", "quant, tova, kivi and h2o take {}-{}% longer per step, quest {}%.", "bench_live_inplace_h200.json",
     lambda d: [str(round(100 / rows(d)["quant"]["speedup_static"] - 100)), str(round(100 / rows(d)["h2o · 25%"]["speedup_static"] - 100)),
                str(round(100 / rows(d)["quest"]["speedup_static"] - 100))]),
    # PERFORMANCE: fused policy steps
    ("PERFORMANCE.md", "**At or below transformers' compiled static cache** ({} ms/step before and after the rows): full at {}×, snapkv at {}×.",
     "bench_live_steps_h200.json", lambda d: [span(".2f", d["baseline_ms"]["transformers generate, static cache (compiled)"])]
     + f(".2f", rows(d)["full"]["speedup_static"], rows(d)["snapkv · 25%"]["speedup_static"])),
    ("PERFORMANCE.md", "quant ({} ms, {}× its speed) and kivi ({} ms, {}×) came close.", "bench_live_steps_h200.json",
     lambda d: f(".2f", rows(d)["quant"]["step_ms"], rows(d)["quant"]["speedup_static"], rows(d)["kivi"]["step_ms"], rows(d)["kivi"]["speedup_static"])),
    ("PERFORMANCE.md", "did not: knorm {} ms, quest {} ms, streaming_llm {} ms, tova {} ms, h2o {} ms.", "bench_live_steps_h200.json",
     lambda d: f(".2f", *(rows(d)[c]["step_ms"] for c in ("knorm · 25%", "quest", "streaming_llm · 25%", "tova · 25%", "h2o · 25%")))),
    ("PERFORMANCE.md", "with the fused blocks alone, h2o took {} ms and kivi {} ms", "bench_live_fused_h200.json",
     lambda d: f(".2f", rows(d)["h2o · 25%"]["step_ms"], rows(d)["kivi"]["step_ms"])),
    ("PERFORMANCE.md", "for full ({} s), snapkv ({} s), quant ({} s) and kivi ({} s). Not met: knorm {} s, tova {} s, streaming_llm {} s, h2o {} s, quest {} s.",
     "bench_live_steps_h200.json", lambda d: f(".2f", *(rows(d)[c]["live_s"] for c in (
         "full", "snapkv · 25%", "quant", "kivi", "knorm · 25%", "tova · 25%", "streaming_llm · 25%", "h2o · 25%", "quest")))),
    ("PERFORMANCE.md", "its build took {}-{} s together", "bench_live_steps_h200.json",
     lambda d: f(".1f", min(r["warmup_s"] for r in d["rows"] if r.get("warmup_s")), max(r["warmup_s"] for r in d["rows"] if r.get("warmup_s")))),
    ("PERFORMANCE.md", "greedy tokens for {} of 128; transformers' own compiled static cache, for {}.", "bench_live_steps_h200.json",
     lambda d: [str(rows(d)["full"]["agree_tokens"]), str(rows(d)["transformers generate, static cache (compiled)"]["agree_tokens"])]),
    ("PERFORMANCE.md", "One at a time: {} s. Four lanes: {} s.", "sweep_lanes_h200.json",
     lambda d: f(".1f", d["seconds_by_lanes"]["1"], d["seconds_by_lanes"]["4"])),
    # PERFORMANCE: a sweep over workers, on a quiet moment and on a busy one
    *[("PERFORMANCE.md", words, name, numbers) for name, when in (("sweep_workers_cpu.json", "At a quiet moment"), ("sweep_workers_cpu_loaded.json", "Earlier, while other agents' jobs kept the host busy"))
      for words, numbers in [
        ("ran a small sweep ({} policies × {} ratios and the reference: {} runs, {} prompt + {} forced tokens of the built-in long text, SmolLM2 fp32 on the CPU)",
         lambda d: [str(len(d["policies"])), str(len(d["ratios"])), str(d["runs"][0]["runs"]), str(d["context"]), str(d["continuation"])]),
        (when + ", {} times each ({}, commit `{}`, {}; `benchmarks/results/" + name + "`; the 1-minute load average was {} on its 2 cores before the runs)",
         lambda d: [str(d["repeats"]), d["date"], d["commit"], d["machine"], span(".1f", [r["load_avg_1_5_15"][0] for r in d["runs"]])]),
        *[(f"| {label} | {{}} | {{}} | {{}} |", lambda d, c=config: [cell(d["summary"][c]["wall_s"]), cell(sweep_runs(d, c, "sweep_s")), cell(d["summary"][c]["cpu_s"])])
          for label, config in (("in process, `OMP_NUM_THREADS=1`", "in process, 1 thread"),
                                ("`--workers 2` (1 thread each; the workers' start and model loads included)", "--workers 2"))],
    ]],
    ("PERFORMANCE.md", "In every run the rows equal the first in-process run's ({} of {} quiet, {} of {} busy", "sweep_workers_cpu.json",
     lambda d: [str(sum(r["rows_equal_first"] for r in d["runs"])), str(len(d["runs"]))]
     + [str(sum(r["rows_equal_first"] for r in load("sweep_workers_cpu_loaded.json")["runs"])), str(len(load("sweep_workers_cpu_loaded.json")["runs"]))]),
    ("PERFORMANCE.md", "quiet, two workers finish in {} s against {} s in process, at more CPU ({} s against {} s", "sweep_workers_cpu.json",
     lambda d: f(".1f", d["summary"]["--workers 2"]["wall_s"]["median"], d["summary"]["in process, 1 thread"]["wall_s"]["median"],
                 d["summary"]["--workers 2"]["cpu_s"]["median"], d["summary"]["in process, 1 thread"]["cpu_s"]["median"])),
    ("PERFORMANCE.md", "each command's wall time was {} times its CPU time", "sweep_workers_cpu_loaded.json",
     lambda d: [span(".0f", [r["wall_s"] / r["cpu_s"] for r in d["runs"]])]),
    ("PERFORMANCE.md", "two workers finished a little sooner ({} s against {} s, medians)", "sweep_workers_cpu_loaded.json",
     lambda d: f(".1f", d["summary"]["--workers 2"]["wall_s"]["median"], d["summary"]["in process, 1 thread"]["wall_s"]["median"])),
    # PERFORMANCE: start-up (A is the commit measured, B the one before the change)
    *[("PERFORMANCE.md", words, "startup_cpu.json", numbers) for words, numbers in [
        ("`{}` (issue 21; `benchmarks/results/startup_cpu.json`), {}, on this project's CPU machine ({}, shared with other agents' jobs: a 1-minute load average of {} before the runs",
         lambda d: [d["command"], d["date"], d["machine"], span(".1f", [d["load_avg_1m"]["min"], d["load_avg_1m"]["max"]])]),
        ("medians of {} runs, min-max in brackets. Before: `{}`; after: `{}`", lambda d: [str(d["runs"]), d["commits"]["B"], d["commits"]["A"]]),
        ("| `streamlit run app.py` to the Home page's title and page links shown in Chromium | {} | **{}** | {} |",
         lambda d: [up(d, "B", "home", "home_interactive_s"), up(d, "A", "home", "home_interactive_s"), up_ratio(d, "home", "home_interactive_s")]),
        ("| ... to the Home page showing the model's summary | {} | {} | {} |",
         lambda d: [up(d, "B", "home", "home_model_shown_s"), up(d, "A", "home", "home_model_shown_s"), up_ratio(d, "home", "home_model_shown_s")]),
        ("loads SmolLM2, runs one forward pass and exits | {}, {} | {}, {} | {} (CPU {}) |",
         lambda d: [up(d, "B", "load", "wall_s"), up(d, "B", "load", "cpu_s", " CPU s"), up(d, "A", "load", "wall_s"), up(d, "A", "load", "cpu_s", " CPU s"),
                    up_ratio(d, "load", "wall_s"), up_ratio(d, "load", "cpu_s")]),
        ("| ... of it, `load_model()` by the child's own clock | {} | {} | {} |",
         lambda d: [up(d, "B", "load", "load_model_s"), up(d, "A", "load", "load_model_s"), up_ratio(d, "load", "load_model_s")]),
        ("| the same process without the load: imports only | {}, {} | {}, {} | {} (CPU {}) |",
         lambda d: [up(d, "B", "import", "wall_s"), up(d, "B", "import", "cpu_s", " CPU s"), up(d, "A", "import", "wall_s"), up(d, "A", "import", "cpu_s", " CPU s"),
                    up_ratio(d, "import", "wall_s"), up_ratio(d, "import", "cpu_s")]),
        ("**Home page interactive in {} s** of a server start (was {} s)",
         lambda d: [f"{d['A']['home']['home_interactive_s']['median']:.1f}", f"{d['B']['home']['home_interactive_s']['median']:.1f}"]),
        ("`load_model()` itself took {} s by the child's own clock (was {} s)",
         lambda d: [f"{d['A']['load']['load_model_s']['median']:.2f}", f"{d['B']['load']['load_model_s']['median']:.2f}"]),
        ("The whole process (imports, load, one forward pass) took {} s against {} s (medians), the paired ratios from {} to {}",
         lambda d: f(".2f", d["A"]["load"]["wall_s"]["median"], d["B"]["load"]["wall_s"]["median"], d["A/B"]["load"]["wall_s"]["min"], d["A/B"]["load"]["wall_s"]["max"])),
        ("imports alone take {} s ({} CPU s) of a fresh process", lambda d: [f"{d['A']['import']['wall_s']['median']:.1f}", f"{d['A']['import']['cpu_s']['median']:.1f}"]),
    ]],
    # README: start-up
    ("README.md", "the Home page is drawn before the model is loaded (about {} s after a server start on 2 CPU cores, was {} s", "startup_cpu.json",
     lambda d: [f"{d['A']['home']['home_interactive_s']['median']:.0f}", f"{d['B']['home']['home_interactive_s']['median']:.0f}"]),
    ("README.md", "`load_model()` of a warm weights cache takes about {} s once torch and transformers are imported", "startup_cpu.json",
     lambda d: [f"{d['A']['load']['load_model_s']['median']:.1f}"]),
    # PERFORMANCE: the load test
    ("PERFORMANCE.md", "| runs | {}: {} finished, {} ended with a message", "load_test_cpu.json",
     lambda d: [str(d["runs"]), str(d["finished"]), str(d["ended_with_a_message"])]),
    ("PERFORMANCE.md", "| outputs | {} of {} equal", "load_test_cpu.json", lambda d: [str(d["finished"])] * 2),
    ("PERFORMANCE.md", "| throughput | {} runs per minute", "load_test_cpu.json", lambda d: [f"{d['runs_per_minute']:.1f}"]),
    ("PERFORMANCE.md", "median {} s, p95 {} s, max {} s", "load_test_cpu.json", lambda d: f(".1f", d["wait_s_median"], d["wait_s_p95"], d["wait_s_max"])),
    ("PERFORMANCE.md", "{} MiB after the first round, {} MiB at the end, peak {} MiB", "load_test_cpu.json",
     lambda d: f(",.0f", d["server_rss_mib"]["after_first_round"], d["server_rss_mib"]["end"], d["server_rss_mib"]["peak"])),
    ("PERFORMANCE.md", "{} headless Chromium sessions on one `streamlit run app.py`", "load_test_cpu.json", lambda d: [str(d["sessions"])]),
    # a sweep's per-point builds of fused policy steps, and the full cache's bf16 repeatability (H200)
    ("PERFORMANCE.md", "| built per point (the default until now) | {} s | not finished: {} of 41 runs after {} s |", "sweep_step_builds_h200.json",
     lambda d: [f"{d['lanes_1_s']:.1f}", str(d["lanes_4_cold"]["runs_done"]), f"{d['lanes_4_cold']['stopped_at_s']:.1f}"]),
    ("PERFORMANCE.md", "| none (`KVVIZ_FUSED_STEPS=0`) | {} s | **{} s** |", "sweep_no_step_builds_h200.json",
     lambda d: f(".1f", d["by_lanes"]["1"]["seconds"], d["by_lanes"]["4"]["seconds"])),
    ("PERFORMANCE.md", "The goal, a sweep within 15 s, is **not met**: {} s on four lanes.", "sweep_no_step_builds_h200.json",
     lambda d: f(".1f", d["by_lanes"]["4"]["seconds"])),
    ("PERFORMANCE.md", "took {} s on four lanes with a synchronization after each step and {} s with the steps queued", "sweep_queue_ab_h200.json",
     lambda d: f(".2f", d["seconds"]["synchronized each step, 4 lanes"], d["seconds"]["queued, 4 lanes"])),
    ("PERFORMANCE.md", "a sweep's `kl_full` moves by up to {}% between two sweeps of the same text", "full_cache_repeatability_h200.json",
     lambda d: [f"{100 * d['sweeps']['kl_full_largest_relative_difference']:.1f}"]),
    ("README.md", "so `kl_full` moves by up to {}% between two sweeps of the same text", "full_cache_repeatability_h200.json",
     lambda d: [f"{100 * d['sweeps']['kl_full_largest_relative_difference']:.1f}"]),
    ("README.md", "a cold 41-run sweep took {} s one at a time with the builds", "sweep_step_builds_h200.json", lambda d: [f"{d['lanes_1_s']:.0f}"]),
    ("PERFORMANCE.md", "medians of 3): {} s with the kept run, {} s with three runs", "live_reuse_cpu.json",
     lambda d: f(".2f", d["median_s"]["kept"], d["median_s"]["three runs"])),
    ("PERFORMANCE.md", "(its whole call {} s of h2o's {} s in the table below)", "bench_live_inplace_h200.json",
     lambda d: f(".2f", rows(d)["full"]["call_s"], rows(d)["h2o · 25%"]["live_s"])),
    # forced continuations read in chunks (CPU)
    ("PERFORMANCE.md", "| whole sweep | {} s | **{} s** |", "sweep_chunks_cpu.json", lambda d: f(".1f", d["before"]["seconds"], d["after"]["seconds"])),
    ("PERFORMANCE.md", "| full-cache reference | {} s | {} s |", "sweep_chunks_cpu.json",
     lambda d: f(".2f", d["before"]["reference"]["seconds"], d["after"]["reference"]["seconds"])),
    ("PERFORMANCE.md", "| each SnapKV / PyramidKV point | {} s | {} s |", "sweep_chunks_cpu.json",
     lambda d: [span(".2f", chunk_seconds(d[k], True)) for k in ("before", "after")]),
    ("PERFORMANCE.md", "| every other point | {} s | {} s (the same work) |", "sweep_chunks_cpu.json",
     lambda d: [span(".2f", chunk_seconds(d[k], False)) for k in ("before", "after")]),
    ("PERFORMANCE.md", "took a median {} s and {} s (ratio {}, range {}-{})", "sweep_chunks_cpu.json",
     lambda d: f(".1f", d["whole_process_wall_s"]["before_median"], d["whole_process_wall_s"]["after_median"])
     + f(".2f", *(d["whole_process_wall_s"][k] for k in ("ratio_median", "ratio_min", "ratio_max")))),
    ("PERFORMANCE.md", "took {} s of the {} s one at a time", "sweep_no_step_builds_h200.json",
     lambda d: f(".1f", sum(chunk_seconds(d, True)) + d["reference"]["seconds"], d["seconds"])),
    ("PERFORMANCE.md", "the whole call went from {} s to {} s, and the overview's own share (the call less the forward pass) from {} s to {} s",
     "overview_cpu.json", lambda d: f(".2f", d["before_median_s"], d["after_median_s"], d["before_own_s"], d["after_own_s"])),
    ("PERFORMANCE.md", "| ms per step | {} | {} | {} | {} |", "batched_rows_cpu.json", lambda d: f(".2f", *d["step_ms_by_rows"].values())),
    ("PERFORMANCE.md", "| ms per row | {} | {} | {} | {} |", "batched_rows_cpu.json", lambda d: f(".2f", *d["per_row_ms"].values())),
    ("PERFORMANCE.md", "so five rows cost {}× one row", "batched_rows_cpu.json", lambda d: [f"{d['step_ms_by_rows']['5'] / d['step_ms_by_rows']['1']:.1f}"]),
    ("README.md", "(a 41-run CPU sweep took {} s instead of {} s", "sweep_chunks_cpu.json", lambda d: f(".1f", d["after"]["seconds"], d["before"]["seconds"])),
]


def chunk_seconds(sweep: dict, chunked: bool) -> list[float]:
    """The seconds of a sweep's SnapKV and PyramidKV points (read in chunks since stop 35), or of the others."""
    return [r["seconds"] for r in sweep["rows"] if (r["policy"] in ("snapkv", "pyramidkv")) == chunked]

# Numbers with a unit that are not measurements: settings, goals, hardware names, arithmetic.
ALLOWED = [
    r"\b(10|25|50|90)%",  # policy ratios and passkey depths (settings): "h2o at 25%", "10% kept", "depths 10%, 50% and 90%"
    r"0-100 %",  # the passkey prompt's depth range
    r"80GB",  # the card's name, "NVIDIA H100 80GB HBM3"
    r"\b4× faster|within (?:[12]|1\.5|15) s\b|within 100 ms|1 s limit",  # the goals set in issues 2, 17 and 24
    r"512 MiB",  # what the Attention page keeps for queries and keys (kvviz/ui/attention_cache.py)
    r"3\.8× the work",  # arithmetic: (32 layers × 32 heads) / (30 × 9)
    r"within 0\.05 nats",  # a tolerance of the Live lanes GPU test (tests/gpu/test_lanes_cuda.py)
    r"under 1\.5 MiB",  # the cap of tests/unit/test_map_decimation.py
    r"at most 256 MiB of their log-probabilities",  # comparison.FullRuns' cap (a setting)
    r"below 5% of H2O's `kl_full` at 20%",  # the bound and the ratio of tests/gpu/test_forced_chunks_cuda.py
]

# Numbers measured before results files were kept, with no file yet. Each stays listed (and so
# visible) until its benchmark is rerun into benchmarks/results/: see the command in the text.
UNSOURCED: dict[str, list[str]] = {}  # none left: "A sweep over workers" and "Start-up" were rerun into results files

UNIT = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:-\d[\d,]*(?:\.\d+)?)? ?(?:ms|s|µs|seconds?|minutes?|hours?|KiB|MiB|GiB|kB|MB|GB|TB/s|%|×(?! ?\d)|x(?! ?\d)|nats)(?!\w)")
RENDERED = [
    re.compile(r"<!-- speed table:.*?<!-- end speed table -->", re.S),  # tests/unit/test_speed_tables.py
    re.compile(r"<!-- widget_maxima:.*?\n\n", re.S),  # tests/unit/test_widget_maxima_numbers.py
    re.compile(r"\| Policy \| Released code.*?\n\n", re.S),  # the faithfulness table: tests/unit/test_faithfulness_table.py
]


def flat(text: str) -> str:
    return " ".join(text.split())


def texts() -> dict[str, str]:
    return {name: path.read_text() for name, path in DOCS.items()}


def expected(row) -> str:
    _, words, name, numbers = row
    return words.format(*numbers(load(name)))


def test_every_number_in_the_table_is_its_files():
    docs = {name: flat(t) for name, t in texts().items()}
    wrong = [f"{row[0]}: expected {expected(row)!r} (from benchmarks/results/{row[2]})" for row in NUMBERS if flat(expected(row)) not in docs[row[0]]]
    assert not wrong, "\n".join(wrong)


def test_every_cited_file_says_when_where_and_how():
    for name in sorted({row[2] for row in NUMBERS}):
        d = load(name)
        date = d.get("date") or PROVENANCE[name][0]
        command = d.get("command") or PROVENANCE[name][1]
        machine = next((d[k] for k in MACHINE_KEYS if d.get(k)), None) or PROVENANCE[name][2:]
        assert date and command and machine, f"{name} does not say when, where and how it was measured"


def without_sourced(doc: str, text: str) -> str:
    for rx in RENDERED:
        text = rx.sub("\n", text)
    for heading in UNSOURCED.get(doc, []):  # a section up to the next heading, or a bullet up to the next bullet or paragraph
        start = text.find(heading)
        assert start >= 0, f"{doc} has no {heading!r} any more: take it out of UNSOURCED"
        ends = ("\n## ",) if heading.startswith("#") else ("\n- ", "\n\n")
        stop = min([i for i in (text.find(e, start + len(heading)) for e in ends) if i >= 0] or [len(text)])
        text = text[:start] + text[stop:]
    text = flat(text)
    for row in NUMBERS:
        if row[0] == doc:
            text = text.replace(flat(expected(row)), " ")
    for allowed in ALLOWED:
        text = re.sub(allowed, " ", text)
    return text


def test_no_hand_typed_measurement_outside_the_table():
    left = {doc: UNIT.findall(without_sourced(doc, text)) for doc, text in texts().items()}
    left = {doc: found for doc, found in left.items() if found}
    assert not left, ("numbers with a unit that no results file backs (add a NUMBERS row naming the file, "
                      f"or an ALLOWED pattern for a setting): {left}")


def test_unsourced_hides_only_what_it_names(monkeypatch):
    """What UNSOURCED hides from the guard is only what it names: a section up to the next heading,
    a bullet up to the next bullet or paragraph, not the list or the text after it."""
    text = "## A\nA took 3 s.\n## B\nB took 4 s.\n- **X**: 5 s\n- Y: 6 s\n\nZ: 7 s\n"
    monkeypatch.setitem(UNSOURCED, "example", ["## A", "- **X**:"])
    assert UNIT.findall(without_sourced("example", text)) == ["4 s", "6 s", "7 s"]


def test_the_guard_catches_a_hand_typed_number():
    assert UNIT.findall(without_sourced("example", "A step takes 3.2 ms, 12% less; 2.5× faster, 7 MiB. 8 × 9 is a count.")) == [
        "3.2 ms", "12%", "2.5×", "7 MiB"]
    assert UNIT.findall(without_sourced("example", "h2o at 25% and 0-100 % depth")) == []


def test_the_calculator_question_in_the_readme():
    """Not a measurement but the calculator's own answer (no results file): the README's figures
    for its one-click question are what the calculator computes today."""
    from kvviz.calculator.architectures import bundled, get_architecture
    from kvviz.calculator.memory import Scenario, estimate

    arch = get_architecture("llama-3.1-70b")
    fit = [estimate(arch, Scenario(context=32_768, dtype=dt), gpu="h100", weights_dtype="int4").max_sequences for dt in ("bf16", "kivi-2")]
    text = flat(DOCS["README.md"].read_text())
    assert "with int4 weights, {} sequences with a bf16 cache, {} with KIVI-2.".format(*fit) in text
    words = {18: "Eighteen"}  # the count as the text spells it
    assert f"{words.get(len(bundled()), len(bundled()))} architectures are bundled" in text
