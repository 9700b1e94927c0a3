"""A real `streamlit run app.py` on a free port, and a headless Debian Chromium driven by Playwright.

Chromium comes from Debian (`apt-get install chromium`, /usr/bin/chromium or $KVVIZ_CHROMIUM):
`playwright install` cannot download browsers here. Without it the e2e tests are skipped, except
under CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import COUNTING

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("KVVIZ_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
STARTUP_TIMEOUT_S = 90
COUNTING_PROMPT = {"example": "Custom", "prompt": COUNTING, "chat": 0}  # see tests/conftest.py


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.e2e)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_server(port: int, log_path: Path, timeout_s: float = STARTUP_TIMEOUT_S) -> subprocess.Popen:
    """``streamlit run app.py`` as the README says (the project's .streamlit/config.toml applies)."""
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address", "127.0.0.1"]
    with open(log_path, "a") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while not _healthy(url):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"streamlit did not come up on {url}:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    return server


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture(scope="session")
def app_server(smollm, tmp_path_factory):
    """(base URL, log file) of a live kvviz server (smollm first, so the weights cache is warm)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    server = start_server(port, log_path)
    try:
        yield f"http://127.0.0.1:{port}", log_path
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def app_url(app_server):
    return app_server[0]


@pytest.fixture()
def fresh_app_url(smollm, tmp_path):
    """A server of its own, started for one test (what a first visitor meets)."""
    port = free_port()
    server = start_server(port, tmp_path / "streamlit.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def browser(in_ci):
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM}: apt-get install chromium, or set KVVIZ_CHROMIUM"
        if in_ci:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
