"""AppTest of the Memory calculator's offload mode: a link opens it, the numbers by hand, the same
link written back, the switch between methods, and a bad link value named."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from kvviz.record.metrics import format_bytes

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "6_Memory_Calculator.py")
TIMEOUT = 300
LINK = {"archs": "llama-3.1-8b,deepseek-v2", "ctx": "32768", "mode": "offload", "method": "simhash", "readbudget": "1024",
        "bits": "16", "tables": "2", "link": "32"}
LEFT = 60_908_206_489  # bytes of an H100 80GB left after Llama-3.1-8B's bf16 weights at 90% (the plain calculator's)


def opened(link: dict) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    for key, value in link.items():
        at.query_params[key] = value
    return at.run()


def test_the_offload_mode_from_a_link_by_hand(smollm):
    at = opened(LINK)
    assert not at.exception and not at.sidebar.warning
    rows = {r["model"]: r for r in at.dataframe[0].value.to_dict("records")}
    llama = rows["Llama-3.1-8B"]
    summary = 32 * 8 * 32768 * 4  # 16 bits x 2 tables = 4 bytes per key, 8 KV heads, 32 layers
    buffer = 32 * 1024 * 2 * 8 * 128 * 2  # 1,024 entries' keys and values per layer and KV head, bf16
    assert llama["summaries"] == format_bytes(summary) == "32.0 MiB"
    assert llama["offload: device"] == format_bytes(summary + buffer) == "160.0 MiB"
    assert llama["host"] == llama["plain cache (device)"] == "4.0 GiB"
    assert llama["moved per step"] == "128.0 MiB"
    assert llama["batch of 1 over 32 GB/s"] == f"{buffer / 32e9 * 1e3:.3f} ms"
    assert llama["offloaded"] == LEFT // (summary + buffer) and llama["sequences on one H100 80GB: plain"] == 14
    assert rows["DeepSeek-V2"]["summaries"] == format_bytes(60 * 32768 * 4)  # MLA: one latent per layer
    spec = json.loads([c for c in at.get("plotly_chart") if "calc.offload_chart" in c.proto.id][0].proto.spec)
    assert {t.get("name") for t in spec["data"]} >= {"summaries", "read-set buffers", "offloaded to host memory"}
    assert {k: at.query_params[k] for k in at.query_params} == LINK  # the page writes the same link back
    at.selectbox(key="_calc.method").set_value("sparq").run()
    assert not at.exception and at.number_input(key="_calc.r").value == 16
    assert "none (" in at.dataframe[0].value.to_dict("records")[0]["summaries"]
    at.radio(key="_calc.mode").set_value("device").run()
    assert not at.exception and "mode" not in at.query_params and "sequences on one H100 80GB" in at.dataframe[0].value.columns


def test_a_bad_read_budget_in_a_link_is_named(smollm):
    at = opened(LINK | {"readbudget": "0"})
    assert not at.exception
    assert "link setting 'readbudget' ignored" in " ".join(w.value for w in at.sidebar.warning)
    assert at.number_input(key="_calc.read_budget").value == 2048


def test_no_gpu_and_a_quantized_cache_in_the_offload_mode(smollm):
    at = opened(LINK | {"gpu": "none", "dtypes": "bf16,kivi-2"})
    assert not at.exception
    assert "offload mode sizes a float cache" in " ".join(w.value for w in at.warning)
    rows = at.dataframe[0].value.to_dict("records")
    assert [r["cache"] for r in rows] == ["bf16", "bf16"] and "offloaded" not in rows[0]
