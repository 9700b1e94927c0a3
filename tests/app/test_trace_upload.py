"""AppTest of the two upload boxes (issue 24): a run bundle dropped on the Live page's "Open a saved
trace" says which page opens it (no Trace.__init__ message), a Live trace dropped on the Compare
page's bundle box says the same the other way, a small npz that declares a huge array gets a
message, and a trace saved by kvviz opens; the pages keep working."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from kvviz.policies.spec import PolicySpec
from kvviz.runs.bundle import RunBundle, RunSettings
from tests.unit.live_synthetic import make_trace

PAGES = Path(__file__).resolve().parents[2] / "pages"
TIMEOUT = 600


def errors(at: AppTest) -> list[str]:
    return [re.sub(r"\\(.)", r"\1", e.value) for e in at.error]


def compare_bundle() -> bytes:
    settings = RunSettings("synthetic", "Custom", "Hello", True, [PolicySpec.create("h2o", budget=5)], 4)
    return RunBundle("compare", settings, {"full": make_trace()}).to_json().encode()


def huge_npz() -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (30, 3, 10_000_000)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("scores.npy", header.getvalue() + bytes(64))
    return buf.getvalue()


def test_the_live_page_upload(smollm, tmp_path):
    at = AppTest.from_file(str(PAGES / "2_Live_Policy.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    upload = lambda name, data: at.file_uploader(key="live.upload").set_value((name, data, "application/octet-stream")).run()  # noqa: E731

    upload("run.bundle.json", compare_bundle())
    assert not at.exception
    assert errors(at) == ["run.bundle.json: This is a run bundle from the Compare policies page: open it there."]

    upload("huge.npz", huge_npz())
    assert not at.exception
    assert len(errors(at)) == 1 and "huge.npz: trace.scores: its header declares 3433.2 MiB of data" in errors(at)[0]

    trace = make_trace()
    upload("saved.npz", trace.save(tmp_path / "saved.npz").read_bytes())
    assert not at.exception and not at.error, errors(at)
    assert at.session_state["live.result"].trace.tokens == trace.tokens


def test_a_live_trace_in_the_compare_bundle_box(smollm):
    at = AppTest.from_file(str(PAGES / "3_Compare.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    trace_json = make_trace().to_json().encode()
    at.file_uploader(key="compare.result.upload").set_value(("trace.json", trace_json, "application/json")).run()
    assert not at.exception
    assert "trace.json: This is a trace saved on the Live policy page: open it there, under “Open a saved trace”." in errors(at)
    assert "compare.result" not in at.session_state
