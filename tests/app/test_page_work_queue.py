"""AppTest: the model work the Attention explorer, the Paged cache and the Quantization lab do in
their own script waits its turn in the process's run queue like a Live run (issue 21), and the
Live page's trace upload obeys KVVIZ_MAX_UPLOAD_MB."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz.runtime.jobs import process_queue, queue_slot
from kvviz.ui import attention_memo

PAGES = Path(__file__).resolve().parents[2] / "pages"
HOLD_S = 0.5


@pytest.mark.parametrize("name", ["1_Attention.py", "5_Paged_Cache.py", "7_Quantization_Lab.py"])
def test_a_page_s_model_work_waits_for_the_slot_another_run_holds(smollm, name):
    attention_memo._overview.clear()  # the Attention explorer's captures are memoized: make it capture
    attention_memo._layer_qk.clear()
    queue = process_queue(1, 64, 20.0)  # the defaults the page sets too
    taken, release, seen = threading.Event(), threading.Event(), {}

    def other_run():  # another visitor's run holds the only slot
        with queue_slot(queue):
            taken.set()
            release.wait(60)

    def let_go():
        deadline = time.monotonic() + 120
        while queue.counts()[1] == 0 and time.monotonic() < deadline:  # until the page's work stands in line
            time.sleep(0.05)
        seen["counts"] = queue.counts()  # (running, waiting)
        time.sleep(HOLD_S)
        seen["released"] = time.monotonic()
        release.set()

    holder = threading.Thread(target=other_run, daemon=True)
    holder.start()
    assert taken.wait(10)
    threading.Thread(target=let_go, daemon=True).start()
    at = AppTest.from_file(str(PAGES / name), default_timeout=300)
    if name == "5_Paged_Cache.py":
        at.query_params["scenario"] = "prefix"  # the page runs nothing until a scenario is chosen
    at.run()
    ended = time.monotonic()
    holder.join(10)
    assert not at.exception and not at.error
    assert seen["counts"] == (1, 1)  # the page's work stood in line behind the other run
    assert ended > seen["released"]  # and the page ended only after that run let go
    assert queue.counts() == (0, 0)  # its slot freed when done


def test_the_live_trace_upload_obeys_the_operator_s_cap(smollm, monkeypatch):
    monkeypatch.setenv("KVVIZ_MAX_UPLOAD_MB", "1")
    at = AppTest.from_file(str(PAGES / "2_Live_Policy.py"), default_timeout=300).run()
    uploader = at.file_uploader(key="live.upload")
    assert "at most 1 MiB" in uploader.label
    uploader.set_value(("big.json", b" " * (2 << 20), "application/json")).run()
    assert not at.exception
    (message,) = [re.sub(r"\\(.)", r"\1", e.value) for e in at.error]
    assert message == "big.json: the file is 2.0 MiB; this page opens traces of at most 1 MiB (this server's setting KVVIZ_MAX_UPLOAD_MB)."
