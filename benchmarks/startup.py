"""Start-up times of kvviz, measured from outside the process: whole-process wall seconds, the
median of several fresh processes (one slow or one lucky run does not move a median).

    python benchmarks/startup.py [--runs 5] [--root CHECKOUT] [--vs CHECKOUT [--vs-commit SHA]] [--only import,load,home] [--json FILE]

- import: ``python -c`` that imports what loading the model needs (kvviz.model.loading, torch,
  transformers' Llama classes and tokenizer, safetensors) and exits;
- load: the same, then ``load_model()`` of the embedded SmolLM2 on the CPU from a warm weights
  cache and one forward pass (the first logits); ``load - import`` is what loading costs once
  imported. The child also reports load_model's own seconds;
- home: ``streamlit run app.py`` on a free loopback port and headless Chromium (opened before the
  clock starts); seconds from starting the server until the Home page shows its title and its
  page links (interactive), and until it shows the model's summary.

``--root`` runs another checkout (e.g. ``git archive <commit> | tar -x -C /tmp/before``) with this
interpreter; ``--vs`` a second one in turn with it (A B A B ...), for before/after numbers on a
machine whose speed drifts (``--vs-commit`` names the second checkout's commit when it is not a
git checkout). The weights cache must be warm (load the model once first). ``--json`` writes the
medians with the date, the machine, the command, each checkout's commit and the load average
read before every run.
Numbers for this repository are in docs/PERFORMANCE.md, section "Start-up".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPORTS = (
    "import kvviz.model.loading, safetensors.torch, transformers.models.llama.modeling_llama;"
    "from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer"
)
LOAD = (
    IMPORTS + "\nimport json, time, torch\nfrom kvviz.model.loading import load_model\n"
    "t = time.perf_counter(); loaded = load_model(None, device='cpu', dtype='float32'); loaded_s = time.perf_counter() - t\n"
    "with torch.no_grad(): loaded.model(torch.tensor([[1, 504, 3458, 282, 4649, 314, 253, 30]]))\n"
    "print(json.dumps({'load_model_s': loaded_s, 'first_logits_s': time.perf_counter() - t, 'cache': loaded.summary.weights_cache}))"
)
HOME_TITLE = "kvviz: inside the KV cache"
MODEL_SUMMARY = "KV cache per token"  # a metric of the Home page's model section


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_process(code: str, root: Path) -> tuple[float, float, dict]:
    """Wall and CPU seconds (user + system) of a fresh ``python -c code`` in ``root``, and the
    JSON its last line prints."""
    cpu, started = children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    wall, cpu = time.perf_counter() - started, children_cpu() - cpu
    if done.returncode:
        raise SystemExit(f"the child failed:\n{done.stderr[-2000:]}")
    last = done.stdout.strip().splitlines()[-1:] or ["{}"]
    return wall, cpu, json.loads(last[0]) if last[0].startswith("{") else {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_home(root: Path, browser) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true"]
    page = browser.new_page()
    started = time.perf_counter()
    server = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 120:
                    raise SystemExit("streamlit did not come up") from None
                time.sleep(0.05)
        up = time.perf_counter() - started
        page.goto(url)
        page.get_by_text(HOME_TITLE).wait_for(timeout=120_000)
        page.locator('[data-testid="stPageLink"]').last.wait_for(timeout=120_000)
        interactive = time.perf_counter() - started
        page.get_by_text(MODEL_SUMMARY).first.wait_for(timeout=120_000)
        model = time.perf_counter() - started
    finally:
        page.close()
        server.terminate()
        server.wait(timeout=30)
    return {"server_up_s": up, "home_interactive_s": interactive, "home_model_shown_s": model}


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def commit_of(root: Path) -> str | None:
    """The checkout's commit, ``+changes`` when its files differ from it; None outside git."""
    done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty=+changes", "--abbrev=7"], capture_output=True, text=True)
    if done.returncode or not (root / ".git").exists():
        return None
    return done.stdout.strip() or None


def medians(rows: list[dict]) -> dict:
    return {key: {"median": round(statistics.median(r[key] for r in rows), 3),
                  "min": round(min(r[key] for r in rows), 3), "max": round(max(r[key] for r in rows), 3)}
            for key in rows[0] if isinstance(rows[0][key], float)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--root", type=Path, default=REPO, help="the checkout to run (default: this one)")
    parser.add_argument("--vs", type=Path, help="a second checkout, run in turn with --root (A B A B ...), "
                        "so that both see the same machine; medians of each and of the ratio A/B per pair")
    parser.add_argument("--only", default="import,load,home")
    parser.add_argument("--vs-commit", help="the commit --vs holds, when it is not a git checkout (git archive)")
    parser.add_argument("--json", type=Path, help="write the results here as well")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    roots = {"A": args.root.resolve(), **({"B": args.vs.resolve()} if args.vs else {})}
    for root in roots.values():
        timed_process(LOAD, root)  # warm: the weights cache and the OS's file cache
    results: dict = {"roots": {k: str(v) for k, v in roots.items()}, "runs": args.runs,
                     "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                     "commits": {"A": commit_of(roots["A"]), **({"B": args.vs_commit or commit_of(roots["B"])} if "B" in roots else {})}}
    rows: dict[str, dict[str, list[dict]]] = {k: {} for k in roots}
    loads: list[float] = []  # the 1-minute load average before each run: the machine is shared

    def measure(kind: str, run) -> None:
        for _ in range(args.runs):
            for name, root in roots.items():
                loads.append(os.getloadavg()[0])
                rows[name].setdefault(kind, []).append(run(root))

    if "import" in wanted:
        def imports(root):
            wall, cpu, _ = timed_process(IMPORTS, root)
            return {"wall_s": wall, "cpu_s": cpu}
        measure("import", imports)
    if "load" in wanted:
        def load(root):
            wall, cpu, inside = timed_process(LOAD, root)
            return {"wall_s": wall, "cpu_s": cpu, **{k: v for k, v in inside.items() if isinstance(v, float)}}
        measure("load", load)
    if "home" in wanted:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            chromium = os.environ.get("KVVIZ_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"  # as tests/e2e
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
            for root in roots.values():
                timed_home(root, browser)  # warm-up run, not counted
            measure("home", lambda root: timed_home(root, browser))
            browser.close()
    results["load_avg_1m"] = {"median": round(statistics.median(loads), 2), "min": round(min(loads), 2), "max": round(max(loads), 2)}
    for name in roots:
        results[name] = {kind: medians(r) for kind, r in rows[name].items()}
    if "B" in roots:
        results["A/B"] = {kind: medians([{k: a[k] / b[k] for k in a if isinstance(a[k], float) and b.get(k)}
                                         for a, b in zip(rows["A"][kind], rows["B"][kind])]) for kind in rows["A"]}
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
