"""The Live page against the CLI doing the same work: one policy run on the passkey example.

Starts ``streamlit run app.py`` (the project's config), opens the Live page in headless Chromium
with the settings in its URL, presses Run and times it until the result is shown (the wall time a
person waits, rendering included); runs ``python -m kvviz run`` with the same prompt, policy and
tokens and takes the engine's run time (``timings.total_s``: prefill and decode, no model load).
Alternates the two ``--repeats`` times, prints a table and writes JSON.

    python benchmarks/page_vs_cli.py --out benchmarks/results/page_vs_cli_cpu.json

Needs Chromium (/usr/bin/chromium or $KVVIZ_CHROMIUM) and the embedded model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kvviz.record import examples as data  # noqa: E402

CHROMIUM = os.environ.get("KVVIZ_CHROMIUM") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("streamlit exited")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("streamlit did not come up")


def cli_run(prompt_file: Path, spec: str, new_tokens: int) -> dict:
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "kvviz", "run", "--prompt-file", str(prompt_file), "--chat", "--policy", spec,
         "--max-new-tokens", str(new_tokens), "--json", "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), check=True,
    )
    process_s = time.perf_counter() - t
    summary = json.loads(out.stdout)
    return {"engine_s": summary["timings"]["total_s"], "process_s": process_s, "text": summary["generated_text"]}


def page_run(page, url: str, timeout_s: float = 900) -> dict:
    from tests.e2e.test_browser import wait_until_idle

    page.goto(url, wait_until="domcontentloaded")
    wait_until_idle(page, timeout_s)  # the first script run settles (model resource, URL state)
    run = page.get_by_role("button", name="▶ Run")
    t = time.perf_counter()
    run.click()
    label = page.locator('[data-testid="stMetric"]', has_text="Whole run")
    label.wait_for(timeout=timeout_s * 1000)
    wall = time.perf_counter() - t
    value = label.locator('[data-testid="stMetricValue"]').inner_text()
    return {"click_to_result_s": wall, "whole_run_s": float(re.sub(r"[^0-9.]", "", value))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "page_vs_cli.json")
    ap.add_argument("--policy", default="h2o:ratio=0.25")
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    prompt = data.EXAMPLES[data.PASSKEY_EXAMPLE]
    prompt_file = Path(tempfile.mkdtemp()) / "passkey.txt"
    prompt_file.write_text(prompt)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    query = urllib.parse.urlencode({"example": data.PASSKEY_EXAMPLE, "policy": args.policy, "new": args.new_tokens, "compare": 0, "device": "cpu"})
    log = open(Path(tempfile.mkdtemp()) / "streamlit.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address", "127.0.0.1"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    rows = []
    try:
        wait_healthy(base, server)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page_run(page, f"{base}/Live_Policy?{query}")  # warm-up: the model loads, the first forward is slow
            cli_run(prompt_file, args.policy, args.new_tokens)
            for i in range(args.repeats):
                cli = cli_run(prompt_file, args.policy, args.new_tokens)
                web = page_run(browser.new_page(viewport={"width": 1400, "height": 1000}), f"{base}/Live_Policy?{query}")
                rows.append({**cli, **web, "ratio": web["click_to_result_s"] / cli["engine_s"]})
                print(f"run {i}: CLI engine {cli['engine_s']:.2f} s | page click to result {web['click_to_result_s']:.2f} s "
                      f"(whole run {web['whole_run_s']:.2f} s) | ratio {rows[-1]['ratio']:.2f}", flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "policy": args.policy, "new_tokens": args.new_tokens, "prompt": data.PASSKEY_EXAMPLE, "runs": rows,
        "median_ratio": med([r["ratio"] for r in rows]),
        "median_cli_s": med([r["engine_s"] for r in rows]), "median_page_s": med([r["click_to_result_s"] for r in rows]),
    }
    print(f"median: CLI {result['median_cli_s']:.2f} s, page {result['median_page_s']:.2f} s, ratio {result['median_ratio']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
