"""A small sweep in process against the same sweep over local workers: whole-command wall and CPU seconds.

    python benchmarks/sweep_workers.py [--repeats 3] [--json benchmarks/results/sweep_workers_cpu.json]

Each run is a fresh ``python -m kvviz sweep ... --json`` process (model load and, for workers,
their start included), so the numbers are what a person waits for at the command line:

- ``in process, 1 thread``: ``OMP_NUM_THREADS=1``, the runs one after the other in the command's
  process;
- ``--workers 2``: two local worker processes, each loading the model once (kvviz gives each
  ``cpu_count // workers`` torch threads).

The configurations alternate (A B A B ...) so that both see the same machine; the load average
is read before each run (a shared host's speed drifts). ``sweep_s`` is the sweep's own
count (the runs, without the start and the model load). CPU seconds are the children's user +
system time (``getrusage``), the workers' included. The rows of every run are compared with the
first in-process run's (floats to 1e-5: a worker's torch sums in another order). Numbers for this
repository: docs/PERFORMANCE.md, "A sweep over workers".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLICIES = ("h2o", "streaming_llm", "snapkv", "tova")
SWEEP = ["-m", "kvviz", "sweep", *[a for p in POLICIES for a in ("--policy", p)], "--ratios", "0.25,0.5",
         "--example", "long", "--context", "256", "--continuation", "32", "--device", "cpu", "--dtype", "float32", "--json"]
CONFIGS = {  # name: (extra arguments, extra environment)
    "in process, 1 thread": ([], {"OMP_NUM_THREADS": "1"}),
    "--workers 2": (["--workers", "2"], {}),
}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one(config: str) -> tuple[dict, dict]:
    extra, env = CONFIGS[config]
    load = os.getloadavg()
    cpu, t = children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, *SWEEP, *extra], cwd=REPO, env=os.environ | env, capture_output=True, text=True, timeout=1800)
    wall, cpu = time.perf_counter() - t, children_cpu() - cpu
    if done.returncode:
        raise SystemExit(f"{config}: the sweep failed:\n{done.stderr[-2000:]}")
    out = json.loads(done.stdout[done.stdout.index("{"):])
    return {"config": config, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "sweep_s": round(out["seconds"], 2),
            "load_avg_1_5_15": [round(x, 2) for x in load], "runs": len(out["rows"]) + 1}, out


def same_rows(a: dict, b: dict, tol: float = 1e-5) -> bool:
    def values(out):
        return [(k, v) for r in out["rows"] for k, v in sorted(r.items()) if k not in ("seconds", "wall_s")]
    va, vb = values(a), values(b)
    return len(va) == len(vb) and all(
        ka == kb and (abs(x - y) <= tol * max(1.0, abs(x)) if isinstance(x, float) and isinstance(y, float) else x == y or "second" in ka)
        for (ka, x), (kb, y) in zip(va, vb))


def commit() -> str | None:
    """The checkout's commit, ``+changes`` when its files differ from it."""
    done = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty=+changes"], capture_output=True, text=True)
    return done.stdout.strip() or None


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    runs, first = [], None
    for repeat in range(args.repeats):
        for config in CONFIGS:
            row, out = one(config)
            first = first or out
            row |= {"repeat": repeat, "rows_equal_first": same_rows(first, out)}
            runs.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "commit": commit(),
        "sweep_command": "python " + " ".join(SWEEP), "configs": {k: " ".join(v[0]) or f"env {v[1]}" for k, v in CONFIGS.items()},
        "policies": list(POLICIES), "ratios": [0.25, 0.5], "context": 256, "continuation": 32, "repeats": args.repeats,
        "load_avg_1m": spread([r["load_avg_1_5_15"][0] for r in runs]),
        "summary": {c: {"wall_s": spread([r["wall_s"] for r in runs if r["config"] == c]),
                        "cpu_s": spread([r["cpu_s"] for r in runs if r["config"] == c])} for c in CONFIGS},
        "runs": runs,
    }
    print(json.dumps(result["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
