"""AppTest of the sidebar's "all GPUs" device (a model split across the host's GPUs): offered only
where torch sees more than one CUDA GPU, and, asked for where it cannot work, a clear error while
the last good model keeps serving the page."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz.ui.model_resource import ALL_GPUS

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture()
def home(smollm):  # smollm: the weights cache is warm
    return AppTest.from_file(APP, default_timeout=300).run()


def test_all_gpus_is_offered_only_with_several_gpus(home, monkeypatch):
    device = home.sidebar.selectbox(key="_kvviz_device")
    assert ALL_GPUS not in device.options
    monkeypatch.setattr("kvviz.ui.sidebar.cuda_device_count", lambda: 2)
    home.run()
    device = home.sidebar.selectbox(key="_kvviz_device")
    assert ALL_GPUS in device.options
    assert "split across this host's 2 GPUs" in device.help


def test_all_gpus_without_cuda_shows_an_error_and_the_model_keeps_working(home, monkeypatch):
    monkeypatch.setattr("kvviz.ui.sidebar.cuda_device_count", lambda: 2)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    home.run()
    home.sidebar.selectbox(key="_kvviz_device").set_value(ALL_GPUS).run()
    assert not home.exception
    errors = [e.value for e in home.sidebar.error]
    assert len(errors) == 1
    assert "splits a model across CUDA GPUs, but no CUDA GPU is available here" in errors[0]
    assert "Still using SmolLM2-135M-Instruct.Q4_1" in errors[0]
    table = home.table[0].value
    assert dict(zip(table.iloc[:, 0], table.iloc[:, 1]))["Layers"] == "30"
