"""The speed tables of README.md and docs/PERFORMANCE.md, rendered from the bench results they cite.

A table sits between two markers that name its kind and its results file:

    <!-- speed table: full benchmarks/results/bench_h200.json -->
    ...
    <!-- end speed table -->

``full`` is ``python -m kvviz bench``'s own table (every row, every column); ``summary`` is the
README's short one (step, both ratios, whole call). tests/unit/test_speed_tables.py checks that
every marked table is the rendering of its file, so a number cannot drift from its measurement:

    python benchmarks/speed_tables.py            # say which tables differ from their files
    python benchmarks/speed_tables.py --write    # render every marked table again
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "PERFORMANCE.md"]
BLOCK = re.compile(r"(<!-- speed table: (full|summary) (\S+) -->\n)(.*?)(<!-- end speed table -->)", re.S)


def load(path: Path):
    """The BenchResult a bench JSON holds (fields a file predates take their defaults)."""
    from kvviz.runtime.bench import BenchResult, BenchRow

    data = json.loads(path.read_text())
    rows = [BenchRow(**row) for row in data.pop("rows")]
    return BenchResult(**data, rows=rows)


def summary(result) -> str:
    """The README's table: each row's median step, its ratio to both baselines, its whole call."""
    static = any(r.speedup_static is not None for r in result.rows)
    lines = [
        "| | ms per decode step | × `generate` (dynamic) |" + (" × compiled static cache |" if static else "") + " whole call |",
        "|---|---|---|" + ("---|" if static else "") + "---|",
    ]
    for r in result.rows:
        path = r.decode_path.replace("graph", "CUDA graph", 1)  # "graph, fused, fused steps": the step's fused kernels too
        name = r.config if r.config.startswith("transformers") else f"kvviz `{r.config}`" + (f" ({path})" if path.startswith("CUDA graph") else "")
        cells = [name, f"{r.step_ms:.2f}", f"{r.speedup:.2f}"] + ([f"{r.speedup_static:.2f}" if r.speedup_static else ""] if static else [])
        lines.append("| " + " | ".join(cells + [f"{r.call_s:.2f} s"]) + " |")
    return "\n".join(lines)


def render(kind: str, path: Path) -> str:
    from kvviz.runtime.bench import table

    result = load(path)
    return (table(result) if kind == "full" else summary(result)) + "\n"


def blocks(text: str):
    """(kind, results path, current body) of every marked table in ``text``."""
    return [(m.group(2), ROOT / m.group(3), m.group(4)) for m in BLOCK.finditer(text)]


def rendered(text: str) -> str:
    """``text`` with every marked table rendered again from its file."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group(2), ROOT / m.group(3)) + m.group(5), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="render every marked table again, in place")
    args = parser.parse_args()
    stale = []
    for doc in DOCS:
        text = doc.read_text()
        if rendered(text) != text:
            stale.append(doc.relative_to(ROOT))
            if args.write:
                doc.write_text(rendered(text))
    print(("rewrote: " if args.write else "differ from their results: ") + ", ".join(map(str, stale)) if stale else "every speed table is its results file")
    return 1 if stale and not args.write else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
