"""The operator's settings from a config file ([kvviz] in $KVVIZ_CONFIG or .streamlit/kvviz.toml):
each setting as its variable would set it, the environment over the file, and a bad value (or a
file that is not TOML) leaving that setting at its default with a note that names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvviz.runtime.settings import Limits, ModelNotAllowed, OperatorSettings, SettingsError, from_env

FULL = """
[server]
port = 8501  # other sections are streamlit's business

[kvviz]
allowed_models = ["Qwen/Qwen3-0.6B", "org/other"]
allow_local_paths = true
max_prompt_tokens = 100
max_new_tokens = 8
max_sweep_runs = 5
max_upload_mb = 3
max_concurrent_runs = 2
max_queued_runs = 7
abandon_after_s = 2.5
"""


def config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "kvviz.toml"
    path.write_text(text)
    return {"KVVIZ_CONFIG": str(path)}


def test_every_setting_from_the_file(tmp_path):
    s = from_env(config(tmp_path, FULL))
    assert s.allowed_models == ("Qwen/Qwen3-0.6B", "org/other") and s.allow_local_paths
    assert s.limits == Limits(max_prompt_tokens=100, max_new_tokens=8, max_sweep_runs=5, max_upload_mb=3)
    assert (s.max_concurrent_runs, s.max_queued_runs, s.abandon_after_s) == (2, 7, 2.5)
    assert s.notes == ()
    s.check_model("org/other")
    s.check_model(str(tmp_path))  # allow_local_paths


def test_the_environment_overrides_the_file(tmp_path):
    env = {**config(tmp_path, FULL), "KVVIZ_MAX_NEW_TOKENS": "16", "KVVIZ_ALLOW_LOCAL_PATHS": "0", "KVVIZ_MAX_SWEEP_RUNS": " "}
    s = from_env(env)
    assert s.limits.max_new_tokens == 16 and not s.allow_local_paths
    assert s.limits.max_sweep_runs == 5  # a blank variable is unset: the file's value stands
    with pytest.raises(ModelNotAllowed, match="KVVIZ_ALLOW_LOCAL_PATHS"):
        s.check_model(str(tmp_path))
    with pytest.raises(SettingsError, match="KVVIZ_MAX_NEW_TOKENS='x'"):
        from_env({**env, "KVVIZ_MAX_NEW_TOKENS": "x"})  # a bad variable still stops the pages, as before


def test_the_default_file_is_read_from_the_server_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert from_env({}) == OperatorSettings()  # no file: the defaults, no note
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "kvviz.toml").write_text("[kvviz]\nmax_new_tokens = 12\n")
    assert from_env({}).limits.max_new_tokens == 12


@pytest.mark.parametrize(
    "text, note",
    [
        ("[kvviz]\nmax_new_tokens = 'lots'\nmax_prompt_tokens = 100\n", "kvviz.toml: [kvviz] max_new_tokens='lots' is not a whole number. The default is used."),
        ("[kvviz]\nmax_new_tokens = 0\nmax_prompt_tokens = 100\n", "max_new_tokens=0 must be at least 1. The default is used."),
        ("[kvviz]\nmax_new_tokens = 12.5\nmax_prompt_tokens = 100\n", "max_new_tokens='12.5' is not a whole number"),
        ("[kvviz]\nmax_upload_mb = 500\nmax_prompt_tokens = 100\n", "max_upload_mb=500 must be between 1 and 50"),
        ("[kvviz]\nallow_local_paths = 'maybe'\nmax_prompt_tokens = 100\n", "allow_local_paths='maybe': use 1 or 0"),
        ("[kvviz]\nmax_tokens = 9\nmax_prompt_tokens = 100\n", "[kvviz] max_tokens is not a kvviz setting (ignored)"),
    ],
)
def test_a_bad_value_keeps_its_default_and_says_why(tmp_path, text, note):
    s = from_env(config(tmp_path, text))
    assert s.limits.max_new_tokens == Limits.max_new_tokens and s.limits.max_upload_mb == Limits.max_upload_mb
    assert not s.allow_local_paths
    assert s.limits.max_prompt_tokens == 100  # the good values beside it apply
    (message,) = s.notes
    assert note in message


@pytest.mark.parametrize("text", ["[kvviz\nmax_new_tokens = 8", "kvviz = 3\n", "\x00\x01"])
def test_a_file_that_cannot_be_read_leaves_the_defaults(tmp_path, text):
    s = from_env(config(tmp_path, text))
    assert s.limits == Limits() and s.allowed_models == ()
    (message,) = s.notes
    assert message.startswith("The config file kvviz.toml cannot be read") and "uses its defaults" in message
    assert str(tmp_path) not in message  # visitors read it: the file's name, not the server's folders


def test_a_named_file_that_is_missing_is_said(tmp_path):
    s = from_env({"KVVIZ_CONFIG": str(tmp_path / "nowhere.toml")})
    assert s.limits == Limits()
    assert s.notes == ("The config file nowhere.toml (KVVIZ_CONFIG) does not exist; its settings are not applied.",)
