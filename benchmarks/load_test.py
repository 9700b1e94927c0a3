"""A demo room on one server: SESSIONS headless browsers press Run on the Live policy page at the
same moment, on the CPU, through the server's run queue (issue 21).

    python benchmarks/load_test.py                      # 16 sessions x 2 runs, 4 new tokens each
    python benchmarks/load_test.py --sessions 4 --rounds 1 --out /tmp/small.json

What it checks (exit 1 if any fails):
- every run finishes or is refused with a message: each one ends in the run store as done, or
  with the notice of a page that went away (one session closes its tab while it waits);
- every output equals the same run made alone, in this process, on the same model;
- the server's memory stays bounded: its resident memory after the last round is within
  ``--rss-growth-mb`` of where it was after the first;
- the server's log holds no exception.

What it measures: runs per minute (finished runs over the time from the first click to the last
end) and the wait of each run in the queue (from its click to its start: the run store's start,
end and whole-run seconds), median and 95th percentile.

Loopback only (127.0.0.1, a free port), bounded (``--timeout-s``), Chromium from Debian
(/usr/bin/chromium or $KVVIZ_CHROMIUM), the weights cache of ``$KVVIZ_CACHE_DIR`` (warm after one
``make run``). No GPU is used (CUDA_VISIBLE_DEVICES is emptied for the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM = os.environ.get("KVVIZ_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking", "--no-first-run"]
# prompts and policies the sessions cycle through: outputs differ between sessions
PROMPTS = [
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,",
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday, Monday, Tuesday,",
]
POLICIES = ["full", "window:budget=12", "h2o:budget=12", "streaming_llm:budget=12"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class RssSampler(threading.Thread):
    """The server's resident memory (MiB), sampled every 0.25 s; ``mark()`` notes the current peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.process, self.samples, self.done = psutil.Process(pid), [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            try:
                self.samples.append(self.process.memory_info().rss / 2**20)
            except Exception:  # noqa: BLE001  (the server ended)
                return

    def now(self) -> float:
        return self.samples[-1] if self.samples else float("nan")


async def session(
    browser, url: str, i: int, rounds: int, new_tokens: int, start: asyncio.Barrier, close_tab: bool, timeout_s: float,
    opened: asyncio.Semaphore,
):
    """One visitor: opens the Live page with its own prompt and policy, presses Run with the
    others, waits for its run to end, ``rounds`` times. Returns [(run id, click time, stored run)]:
    the stored run is read as soon as it ended (the run store keeps only its newest runs)."""
    from kvviz.runs import store as run_store

    from playwright.async_api import expect

    params = {
        "example": "Custom", "prompt": PROMPTS[i % len(PROMPTS)], "chat": 0,
        "policy": POLICIES[(i // len(PROMPTS)) % len(POLICIES)], "new": new_tokens, "compare": 0,
    }
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    runs = []
    try:
        app = page.locator('[data-testid="stApp"]')
        async with opened:  # pages open a few at a time (a 2-core host draws 16 at once slowly); the runs start together
            await page.goto(url + "/Live_Policy?" + urllib.parse.urlencode(params), wait_until="domcontentloaded")
            await page.get_by_role("button", name="▶ Run").wait_for(timeout=timeout_s * 1000)
        previous = None
        for r in range(rounds):
            run_button = page.get_by_role("button", name="▶ Run")
            await run_button.wait_for(timeout=timeout_s * 1000)
            await expect(app).to_have_attribute("data-test-script-state", "notRunning", timeout=timeout_s * 1000)
            await expect(run_button).to_be_enabled(timeout=timeout_s * 1000)
            await start.wait()  # every session clicks at the same moment
            clicked = time.time()
            await run_button.click()
            # the URL names the new run (not the one before it)
            await page.wait_for_url(lambda u, before=previous: _run_id(u) not in (None, before), timeout=timeout_s * 1000)
            run_id = previous = _run_id(page.url)
            if close_tab and r == rounds - 1:
                await page.wait_for_timeout(500)
                await page.close()  # the tab closes while its run waits: the run leaves the queue
                runs.append((run_id, clicked, None))  # read at the end
                break
            stored = None
            while stored is None or stored.meta.get("state") == "running":  # the run store says when it ended
                await asyncio.sleep(0.5)
                stored = await asyncio.to_thread(run_store.load, run_id)
            runs.append((run_id, clicked, stored))
        await start.wait()  # every tab stays open until every session is done
        return runs
    finally:
        await context.close()


def _run_id(url: str) -> str | None:
    m = re.search(r"[?&]run=([0-9a-f]{16})", url)
    return m.group(1) if m else None


async def drive(url: str, args) -> list[tuple[int, str, float, object]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            barrier = asyncio.Barrier(args.sessions)  # reusable: one wait per round
            opened = asyncio.Semaphore(4)
            results = await asyncio.wait_for(
                asyncio.gather(*[
                    session(browser, url, i, args.rounds, args.new_tokens, barrier, close_tab=i == args.sessions - 1,
                            timeout_s=args.timeout_s, opened=opened)
                    for i in range(args.sessions)
                ]),
                timeout=args.timeout_s,
            )
        finally:
            await browser.close()
    return [(i, run_id, clicked, stored) for i, runs in enumerate(results) for run_id, clicked, stored in runs]


def solo_outputs(model, tokenizer, request: dict, new_tokens: int) -> list[int]:
    from kvviz.policies.spec import PolicySpec
    from kvviz.runtime import engine

    trace = engine.run(model, tokenizer, request["prompt_ids"], PolicySpec.parse(request["spec"]), engine.DecodeOptions(max_new_tokens=new_tokens))
    return list(trace.generated_ids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="runs per session (the last tab closes during its last)")
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=1, help="KVVIZ_MAX_CONCURRENT_RUNS of the server")
    parser.add_argument("--rss-growth-mb", type=float, default=400.0)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "load_test_cpu.json"))
    args = parser.parse_args()

    from kvviz.model.loading import default_model_spec, load_model
    from kvviz.runs import store as run_store

    loaded = load_model(default_model_spec(), device="cpu", dtype="float32")  # for the solo runs
    port, log_path = free_port(), Path(tempfile.mkdtemp(prefix="kvviz-load-")) / "server.log"
    env = dict(
        os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false", CUDA_VISIBLE_DEVICES="",
        KVVIZ_MAX_CONCURRENT_RUNS=str(args.concurrency), KVVIZ_MAX_NEW_TOKENS=str(max(args.new_tokens, 8)),
        KVVIZ_ABANDON_AFTER_S="5",
    )
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address", "127.0.0.1",
               "--server.headless", "true"]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    rss = None
    try:
        deadline = time.monotonic() + 120
        while not healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text()[-3000:])
                return 1
            time.sleep(0.5)
        rss = RssSampler(server.pid)
        rss.start()
        started = time.time()
        clicks = asyncio.run(drive(url, args))
        # the closed tab's run leaves the queue after KVVIZ_ABANDON_AFTER_S; every run has ended once none is "running"
        end = time.monotonic() + 120
        while time.monotonic() < end and any(
            stored is None and (run_store.load(r) or _running()).meta.get("state") == "running" for _, r, _, stored in clicks
        ):
            time.sleep(0.5)
        wall = time.time() - started
        time.sleep(1.0)
    finally:
        if rss is not None:
            rss.done.set()
            rss.join()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    failures, waits, finished, refused, ends = [], [], 0, 0, []
    if len({run_id for _, run_id, _, _ in clicks}) != len(clicks):
        failures.append("a run id was counted twice: a session read its previous run")
    for session_i, run_id, _clicked, stored in clicks:
        stored = stored or run_store.load(run_id)
        if stored is None:
            failures.append(f"session {session_i}: run {run_id} is not in the run store")
            continue
        meta = stored.meta
        closed_tab = session_i == len({c[0] for c in clicks}) - 1 and run_id == clicks[-1][1]
        if closed_tab and (meta.get("notice") or meta.get("stopped_in")):
            refused += 1  # its tab closed: it left the queue, or stopped, with a message
        elif meta.get("error"):
            failures.append(f"session {session_i}: run {run_id} failed: {meta['error']}")
        elif "policy" in stored.traces and not meta.get("stopped_in"):
            finished += 1
            whole = (meta.get("wall_s") or {}).get("whole run", 0.0)
            ends.append(meta["ended"])
            waits.append(max(meta["ended"] - whole - meta["started"], 0.0))  # the server's clock: Run pressed to work begun
            solo = solo_outputs(loaded.model, loaded.tokenizer, meta["request"], meta["request"]["max_new_tokens"])
            if list(stored.traces["policy"].generated_ids) != solo:
                failures.append(f"session {session_i}: run {run_id} gave {list(stored.traces['policy'].generated_ids)}, alone {solo}")
        else:
            failures.append(f"session {session_i}: run {run_id} ended with neither a result nor a message: {meta.get('state')}")

    log_text = log_path.read_text()
    exceptions = [line for line in log_text.splitlines() if re.search(r"Traceback|Error|Exception", line)]
    failures += [f"server log: {line}" for line in exceptions[:10]]
    samples = rss.samples if rss is not None else []
    after_first = samples[min(len(samples) // max(args.rounds, 1), len(samples) - 1)] if samples else float("nan")
    last = samples[-1] if samples else float("nan")
    if samples and last - after_first > args.rss_growth_mb:
        failures.append(f"server memory grew from {after_first:.0f} to {last:.0f} MiB")
    span = (max(ends) - min(c for _, _, c, _ in clicks)) if ends else float("nan")
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "sessions": args.sessions, "rounds": args.rounds, "new_tokens": args.new_tokens, "concurrency": args.concurrency,
        "runs": len(clicks), "finished": finished, "ended_with_a_message": refused,
        "runs_per_minute": round(finished / span * 60, 1) if ends else None,
        "wait_s_median": round(statistics.median(waits), 2) if waits else None,
        "wait_s_p95": round(statistics.quantiles(waits, n=20, method="inclusive")[-1], 2) if len(waits) >= 2 else None,
        "wait_s_max": round(max(waits), 2) if waits else None,
        "server_rss_mib": {"peak": round(max(samples), 0) if samples else None, "after_first_round": round(after_first, 0), "end": round(last, 0)},
        "wall_s": round(wall, 1), "failures": failures,
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if failures else 0


class _running:
    meta = {"state": "running"}


if __name__ == "__main__":
    sys.exit(main())
