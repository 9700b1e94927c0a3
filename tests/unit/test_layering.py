"""The house's layering, checked: a chart module imports no torch, pages stay thin, and every
colour comes from kvviz/charts/style.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART_MODULES = sorted(f"kvviz.charts.{p.stem}" for p in (REPO / "kvviz" / "charts").glob("*.py") if p.stem != "__init__")
FLOOR_MODULES = ["kvviz.metrics", "kvviz.trace", "kvviz.text", "kvviz.attention_data", "kvviz.run_store"]
HEX = re.compile(r"(?<![&\w])#(?:[0-9a-fA-F]{8}|[0-9a-fA-F]{6}|[0-9a-fA-F]{3})\b")


@pytest.mark.parametrize("module", CHART_MODULES + FLOOR_MODULES)
def test_module_imports_no_torch(module):
    code = f"import sys, {module}; bad = [m for m in ('torch', 'transformers', 'streamlit') if m in sys.modules]; print(','.join(bad))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"


def test_the_scanner_finds_a_hex_colour():
    assert HEX.findall('color: "#1f2937"; x = "#abc"') == ["#1f2937", "#abc"]
    assert HEX.findall("&#10; #{pos} #x27 f'#{p}'") == []


def test_every_colour_comes_from_the_style_module():
    files = [*(REPO / "kvviz" / "charts").glob("*.py"), *(REPO / "kvviz" / "ui").glob("*.py"), *(REPO / "pages").glob("*.py"), REPO / "app.py"]
    found = {str(f.relative_to(REPO)): HEX.findall(f.read_text()) for f in files if f.name != "style.py"}
    assert {f: c for f, c in found.items() if c} == {}


def test_pages_stay_thin():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (REPO / "pages").glob("*.py")}
    assert sizes and max(sizes.values()) <= 150, sizes
