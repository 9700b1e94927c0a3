"""The house's layering, checked by folder: every import in kvviz points down the table of
layers below (or stays in its own package), nothing under record/ or charts/ imports torch, pages
stay thin, and every colour comes from kvviz/charts/style.py."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KVVIZ = REPO / "kvviz"
# The layers, lowest first. A module may import from its own package and from packages of a
# lower rank; never sideways (same rank, other package) and never up.
LAYERS = {
    "i18n": -1,  # the message catalogs: the examples' names and every page's text read them
    "record": 0,  # torch-free: Trace, token states, metrics, text, examples, report
    "storage": 1,  # how tensors are held: quantization kernels, fixed-capacity buffers
    "model": 1.5,  # loading, devices, query capture (a policy may read the model before the prefill)
    "policies": 2,  # the policies, their spec and scoring
    "runtime": 3,  # engine, PolicyCache, CUDA graphs, background jobs, bench
    "runs": 3,  # run bundles and the run store
    "live": 4, "compare": 4, "sweep": 4, "attention": 4, "quant_lab": 4, "paged": 4, "calculator": 4, "dedup": 4,  # experiments
    "charts": 5,  # pure figure builders
    "ui": 6, "commands": 6,  # the only streamlit code; the CLI's subcommands
    "cli": 7, "__main__": 8,
}
TORCH_FREE = ("record", "charts")


def module_name(path: Path, base: Path = REPO) -> str:
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kvviz_imports(path: Path) -> set[str]:
    """Every kvviz module a file imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("kvviz"):
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("kvviz"))
    return out


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kvviz"


TORCH_FREE_MODULES = sorted(module_name(p) for pkg in TORCH_FREE for p in (KVVIZ / pkg).rglob("*.py"))
HEX = re.compile(r"(?<![&\w])#(?:[0-9a-fA-F]{8}|[0-9a-fA-F]{6}|[0-9a-fA-F]{3})\b")


@pytest.mark.parametrize("module", TORCH_FREE_MODULES)
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


def test_every_package_has_a_layer():
    packages = {p.name for p in KVVIZ.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in KVVIZ.glob("*.py") if p.stem != "__init__"}
    assert packages | modules == set(LAYERS)


def upward_imports(root: Path) -> list[str]:
    """``module -> imported`` for every import under ``root`` (a kvviz folder) that is not downward."""
    upward = []
    for path in sorted(root.rglob("*.py")):
        here = package_of(module_name(path, root.parent))
        for imported in kvviz_imports(path):
            there = package_of(imported)
            if there not in ("kvviz", here) and LAYERS[there] >= LAYERS[here]:
                upward.append(f"{module_name(path, root.parent)} -> {imported}")
    return upward


def test_imports_point_down():
    assert upward_imports(KVVIZ) == []


def test_the_checker_sees_upward_and_sideways_imports(tmp_path):
    """The checker is not blind: the Trace's module reaching up to the engine inside a function, a
    chart importing the ui, and the run store importing the runtime package (same layer) are all caught;
    a chart reading the Trace is not."""
    for pkg in ("record", "charts", "runs"):
        (tmp_path / "kvviz" / pkg).mkdir(parents=True)
    (tmp_path / "kvviz" / "record" / "bad.py").write_text("def f():\n    from kvviz.runtime import engine\n")
    (tmp_path / "kvviz" / "charts" / "bad.py").write_text("from kvviz.ui.state import persisted\n")
    (tmp_path / "kvviz" / "charts" / "good.py").write_text("from kvviz.record.trace import Trace\n")
    (tmp_path / "kvviz" / "runs" / "odd.py").write_text("import kvviz.runtime.jobs\n")
    assert upward_imports(tmp_path / "kvviz") == [
        "kvviz.charts.bad -> kvviz.ui.state.persisted",
        "kvviz.record.bad -> kvviz.runtime.engine",
        "kvviz.runs.odd -> kvviz.runtime.jobs",
    ]


def test_every_favicon_is_drawn_without_the_network():
    """A ':material/...:' page_icon makes the browser fetch the icon from a font CDN (it fails
    offline, at a demo without internet); the app's PNG and emoji icons are served locally."""
    calls = re.compile(r"(?:set_page_config\([^)]*page_icon=|start_page\(\s*(?:_\()?\"[^\"]*\"\)?,\s*)(\"[^\"]*\"|[A-Z_]+)")
    icons = {str(f.relative_to(REPO)): calls.findall(f.read_text()) for f in [REPO / "app.py", *(REPO / "pages").glob("*.py")]}
    assert all(icons.values()), icons  # every page sets one (the scanner is not blind)
    assert {f: i for f, i in icons.items() if any(x.startswith('":material') for x in i)} == {}
