"""Property tests (hypothesis): whatever a config says, the calculator answers or raises its own
error, quickly; whatever is typed after ``calc --arch/--context/--batch``, the CLI answers or exits
2 with one line, never a traceback."""

from __future__ import annotations

import math
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvviz import cli
from kvviz.calculator import memory as calc
from kvviz.calculator.memory import CalcError, Scenario

FIELDS = [
    "num_hidden_layers", "n_layer", "num_layers", "num_attention_heads", "n_head", "num_key_value_heads", "num_kv_heads",
    "head_dim", "hidden_size", "n_embd", "d_model", "vocab_size", "intermediate_size", "moe_intermediate_size",
    "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "q_lora_rank", "sliding_window",
    "attention_chunk_size", "use_sliding_window", "max_window_layers", "sliding_window_pattern", "layer_types",
    "model_type", "multi_query", "num_local_experts", "n_routed_experts", "num_experts", "n_shared_experts",
    "first_k_dense_replace", "tie_word_embeddings", "attention_bias", "max_position_embeddings", "text_config",
    "_name_or_path",
]
SANE = {"num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 512,
        "vocab_size": 1000, "intermediate_size": 1024}

numbers = st.one_of(
    st.integers(min_value=-4, max_value=300), st.integers(), st.sampled_from([0, 1, 2, 1024, 1025, 2**24, 2**40, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e30, -1.0, 2.5, 64.0]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12),
                    st.sampled_from(["llama", "gemma2", "gemma3_text", "qwen2", "deepseek_v3", "sliding_attention"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
field_values = st.one_of(numbers, numbers, json_values)  # mostly numbers: the fields are counts
configs = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=14),
    # a usable config with one to three fields changed: the bounds and the branches near them
    st.builds(lambda base, extra: base | extra, st.just(SANE), st.dictionaries(st.sampled_from(FIELDS), field_values, min_size=1, max_size=3)),
    st.builds(lambda base, extra: base | extra, st.just(SANE), st.dictionaries(st.sampled_from(FIELDS[:12]), numbers, min_size=1, max_size=2)),
    json_values,
)


def answer_or_calc_error(cfg) -> None:
    """Everything the page and the CLI do with a config; only CalcError may come out."""
    try:
        arch = calc.architecture_from_config(cfg)
    except CalcError as exc:
        assert "\n" not in str(exc) and "Traceback" not in str(exc)
        return
    lay = arch.layout
    assert 1 <= lay.n_layers <= 1024 and len(lay.windows) == lay.n_layers
    for dtype in ("bf16", "int4", "kivi-2"):
        try:
            est = calc.estimate(arch, Scenario(context=4096, batch=3, dtype=dtype), gpu="h100")
        except CalcError:
            continue
        assert est.bytes_total == 3 * est.bytes_per_sequence > 0 and est.max_sequences >= 0
        assert all(isinstance(n, str) for n in est.notes)
        curve = calc.memory_curve(arch, Scenario(context=4096, batch=3, dtype=dtype), [1, 4096, 2**26])
        assert curve[1] == est.bytes_total
    arch.max_context  # noqa: B018  (read for the note: a number or None, never an exception)


@settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_any_config_gives_an_answer_or_the_calculators_error(cfg):
    start = time.perf_counter()
    answer_or_calc_error(cfg)
    answer_or_calc_error({"model_type": "llava", "text_config": cfg})
    assert time.perf_counter() - start < 1.0


@settings(max_examples=200, deadline=1000)
@given(st.text(max_size=200))
def test_any_pasted_text_gives_an_answer_or_the_calculators_error(text):
    try:
        calc.architecture_from_json_text(text)
    except CalcError as exc:
        assert "\n" not in str(exc)


@pytest.fixture(scope="module", autouse=True)
def offline():
    """An --arch that looks like owner/name would be fetched from the hub: not from a test."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if before is None:
        del os.environ["HF_HUB_OFFLINE"]
    else:
        os.environ["HF_HUB_OFFLINE"] = before


typed = st.one_of(
    st.text(max_size=16), st.from_regex(r"-?[0-9]{1,30}(\.[0-9]*)?([eE][+-]?[0-9]{1,4})?k?", fullmatch=True),
    st.sampled_from(["", "0", "-1", "32k", "k", "1e400", "nan", "inf", "-h", "--json", "4096", "1e30", "7.5", "2^20"]),
)
arches = st.one_of(st.text(max_size=16), st.sampled_from(["llama-2-7b", "DeepSeek-V2", " gemma-2b ", "a/b", ".", "/", "-x"]))


def calc_exit(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arch=arches, context=typed, batch=typed)
def test_calc_arguments_give_an_answer_or_one_line_and_exit_2(arch, context, batch, capsys):
    code, out, err = calc_exit(["calc", "--arch", arch, "--context", context, "--batch", batch, "--json"], capsys)
    assert code in (0, 2)
    if code == 2:
        assert out == "" and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    else:
        assert err == "" and out.count("\n") == 1 and '"bytes_total"' in out


@settings(max_examples=50, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(context=st.integers(min_value=1, max_value=2**24), batch=st.integers(min_value=1, max_value=2**16))
def test_calc_answers_every_context_and_batch_in_bounds_by_hand(context, batch, capsys):
    code, out, _ = calc_exit(["calc", "--arch", "llama-3.1-8b", "--context", str(context), "--batch", str(batch), "--json"], capsys)
    assert code == 0
    import json

    result = json.loads(out)
    assert result["bytes_total"] == batch * context * 2 * 32 * 8 * 128 * 2  # K and V x 32 layers x 8 KV heads x 128 dims x bf16
    assert math.isclose(result["bytes_per_token"], 131_072)
