"""The calculator's figures: data, colours and lines checked against the calculator's own numbers
and by hand; the chart and calculator modules import no torch."""

import subprocess
import sys

import numpy as np

from kvviz.calculator import memory as calc
from kvviz.charts import calculator as charts
from kvviz.charts.style import COLORS, series_color


def test_context_labels_and_axis():
    assert [charts.context_label(n) for n in (1000, 4096, 32768, 2**20)] == ["1,000", "4k", "32k", "1M"]
    axis = charts.context_axis(32768)
    assert axis[0] == 128 and axis[-1] == 32768 and np.all(np.diff(axis) > 0)


def test_memory_figure_draws_each_model_and_dtype_with_the_room_left():
    contexts = charts.context_axis(8192, points=16)
    sc = calc.Scenario(context=4096, batch=2)
    a, b = calc.get_architecture("llama-3.1-8b"), calc.get_architecture("gemma-2-9b")
    curves = [
        charts.Curve(a.display, "bf16", contexts, calc.memory_curve(a, sc, contexts)),
        charts.Curve(a.display, "int4", contexts, calc.memory_curve(a, calc.Scenario(context=4096, batch=2, dtype="int4"), contexts)),
        charts.Curve(b.display, "bf16", contexts, calc.memory_curve(b, sc, contexts)),
    ]
    room = 40 * 2**30
    fig = charts.memory_figure(curves, {a.display: room, b.display: -5}, 4096, "H100 80GB", batch=2)
    lines = fig.data
    assert [t.name for t in lines] == ["Llama-3.1-8B · bf16", "Llama-3.1-8B · int4", "Gemma-2-9B · bf16"]
    assert lines[0].line.color == lines[1].line.color == series_color(0) and lines[2].line.color == series_color(1)
    assert lines[0].line.dash == "solid" and lines[1].line.dash == "dash"
    # GiB on the y axis: Llama-3.1-8B at 8,192 tokens, batch 2: 2 x 8,192 x 131,072 bytes = 2 GiB
    assert lines[0].y[-1] == 2 * 8192 * 131_072 / 2**30 == 2.0
    dotted = [s for s in fig.layout.shapes if s.line.dash == "dot"]
    assert len(dotted) == 1 and dotted[0].y0 == 40 and dotted[0].line.color == series_color(0)  # none where the weights do not fit
    assert fig.layout.xaxis.type == "log"


def test_attention_kinds_figure_puts_each_kind_beside_its_mha():
    rows = [{"kind": "MLA", "model": "DeepSeek-V2", "bytes_per_token": 69_120, "mha_bytes_per_token": 3_932_160}]
    fig = charts.attention_kinds_figure(rows)
    assert [list(t.y) for t in fig.data] == [[3_932_160], [69_120]]
    assert fig.data[1].marker.color == COLORS["kept"] and fig.layout.yaxis.type == "log"


def test_estimate_rows():
    est = calc.estimate(calc.get_architecture("llama-2-7b"), calc.Scenario(context=4096, dtype="fp16"), gpu="l4")
    row = charts.estimate_rows([est])[0]
    assert row["per sequence"] == "2.0 GiB" and row["sequences on one L4 24GB"] == est.max_sequences


def test_no_torch_below_the_pages():
    code = "import sys, kvviz.calculator.memory, kvviz.charts.calculator, kvviz.charts.quant_lab; assert 'torch' not in sys.modules, 'torch imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
