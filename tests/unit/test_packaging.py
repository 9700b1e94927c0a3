"""kvviz as a package (issue 26): the wheel built from the sources carries the app (app.py, every
page, the theme) and the `kvviz` command; installed from it, the app is found in the package, not
in a checkout; `kvviz --version` says the version the wheel and the CHANGELOG say; `kvviz app` hands
its arguments to `streamlit run` untouched. Building the wheel takes about 10 s (pip, build
isolation: what `pip install .` does)."""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import kvviz
from kvviz import cli
from kvviz.ui import navigation

REPO = Path(__file__).resolve().parents[2]
APP_FILES = ["app.py", ".streamlit/config.toml", *(p.path for p in [navigation.HOME, *navigation.PAGES])]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built by pip from a copy of what a source distribution holds (MANIFEST.in), so the
    build uses nothing else from the checkout (no .git, no build/ left by an earlier build)."""
    src = tmp_path_factory.mktemp("src")
    for name in ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "app.py"]:
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_app")
    for folder in ["kvviz", "pages", ".streamlit"]:
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (whl,) = out.glob("kvviz-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked as pip lays a pure-Python wheel into site-packages."""
    site = tmp_path_factory.mktemp("site")
    zipfile.ZipFile(wheel).extractall(site)
    return site


def metadata(wheel: Path) -> tuple[email.message.Message, str]:
    with zipfile.ZipFile(wheel) as z:
        info = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        entry_points = z.read(info.replace("METADATA", "entry_points.txt")).decode()
        return email.message_from_bytes(z.read(info)), entry_points


def test_the_wheel_carries_the_app_byte_for_byte(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in APP_FILES:
            assert f"kvviz/_app/{name}" in names, name
            assert z.read(f"kvviz/_app/{name}") == (REPO / name).read_bytes(), name
        assert "kvviz/data/favicon.png" in names and "kvviz/commands/app.py" in names
        assert "kvviz/locale/zh_CN/LC_MESSAGES/kvviz.po" in names and not [n for n in names if n.endswith(".mo")]  # kvviz.i18n
        assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "docs/", "pages/")) or n == "app.py"]


def test_the_wheel_declares_the_command_version_and_dependencies(wheel):
    meta, entry_points = metadata(wheel)
    assert re.search(r"^kvviz\s*=\s*kvviz\.cli:main$", entry_points, re.M), entry_points
    assert meta["Version"] == kvviz.__version__
    requires = meta.get_all("Requires-Dist")
    runtime = {re.split(r"[<>=!~ ;\[]", r)[0].lower(): r for r in requires if "extra ==" not in r}
    assert re.fullmatch(r"torch>=2\.\d+", runtime["torch"].replace(" ", "")), runtime["torch"]
    assert {"transformers", "streamlit", "gguf", "accelerate", "numpy"} <= set(runtime)
    # test tools only in the `test` extra; the model's package (it would compile llama-cpp-python) nowhere
    assert not {"pytest", "hypothesis", "ruff", "playwright"} & set(runtime)
    assert {r.split(">")[0] for r in requires if 'extra == "test"' in r} >= {"pytest", "hypothesis", "ruff", "playwright"}
    assert not [r for r in requires if "smollm2" in r.lower()]


def run_installed(site: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m kvviz ...`` with the unpacked wheel first on the path, started outside the checkout."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, *args], cwd=site, env=env, capture_output=True, text=True, timeout=120)


def test_installed_kvviz_finds_the_app_in_the_package(installed):
    code = ("import kvviz; from kvviz.ui import navigation; from kvviz.commands.app import app_root; "
            "print(kvviz.__file__); print(navigation.ROOT); print(app_root())")
    out = run_installed(installed, "-c", code)
    assert out.returncode == 0, out.stderr[-2000:]
    module, root, app_root = out.stdout.split()
    assert Path(module).parent == installed / "kvviz"  # the wheel's kvviz, not the checkout's
    assert Path(root) == Path(app_root) == installed / "kvviz" / "_app"
    assert all((Path(root) / name).is_file() for name in APP_FILES)


def test_version_matches_the_wheel_and_the_changelog(installed, wheel):
    out = run_installed(installed, "-m", "kvviz", "--version")
    assert out.returncode == 0, out.stderr
    latest = re.search(r"^## \[?(\d+\.\d+\.\d+)", (REPO / "CHANGELOG.md").read_text(), re.M).group(1)
    assert out.stdout.strip() == f"kvviz {metadata(wheel)[0]['Version']}" == f"kvviz {latest}"


def test_app_help_is_streamlits(installed):
    out = run_installed(installed, "-m", "kvviz", "app", "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("kvviz app [STREAMLIT OPTIONS]")
    assert "--server.port" in out.stdout and "--theme.base" in out.stdout  # streamlit run's own options


def test_app_hands_every_argument_to_streamlit_in_order(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.delenv("KVVIZ_POLICY_PATH", raising=False)
    plugin = str(tmp_path / "mine.py")
    assert cli.main(["--policy-file", plugin, "app", "--server.port", "8600", "--server.headless=true", "--policy-file", "x"]) == 0
    ((path, argv, env),) = calls
    assert argv[:4] == [sys.executable, "-m", "streamlit", "run"] and path == sys.executable
    assert Path(argv[4]) == navigation.ROOT / "app.py" == REPO / "app.py"  # a checkout: its own files
    assert argv[5:] == ["--server.port", "8600", "--server.headless=true", "--policy-file", "x"]
    assert env["KVVIZ_POLICY_PATH"] == plugin


def test_other_commands_still_refuse_unknown_options(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["calc", "--server.port", "8600"])
    assert e.value.code == 2 and "unrecognized arguments: --server.port 8600" in capsys.readouterr().err
