"""PolicySpec: the one value a policy choice travels as (controls, CLI, engine, Trace, URL)."""

import json
import math

import pytest

from kvviz.record import metrics
from kvviz.policies import PolicyError
from kvviz.policies.spec import PolicySpec


def test_text_form_round_trips_and_fills_defaults():
    spec = PolicySpec.parse("snapkv:window=8,kernel=7")
    assert spec.name == "snapkv" and spec.ratio == 0.25 and spec.budget is None  # the class's default ratio
    assert spec.params_dict() == {"snapkv": {"window": 8, "kernel": 7, "pooling": "avg"}}
    assert spec.to_text() == "snapkv:window=8,ratio=0.25"  # kernel 7 is the default
    assert PolicySpec.parse(spec.to_text()) == spec
    assert hash(PolicySpec.parse(spec.to_text())) == hash(spec)


def test_composition_prefixed_params_and_budget_in_text():
    spec = PolicySpec.parse("h2o+kivi:kivi.bits=4,recent=4,budget=32")
    assert spec.name == "h2o+kivi" and spec.budget == 32 and spec.ratio is None
    assert spec.params_dict()["kivi"]["bits"] == 4 and spec.params_dict()["h2o"]["recent"] == 4
    assert PolicySpec.parse(spec.to_text()) == spec
    assert PolicySpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.label() == "h2o+kivi h2o.recent=4 kivi.bits=4 · 32/head"


def test_policies_without_budget_carry_none():
    spec = PolicySpec.create("quant", {"bits": 8}, ratio=0.5)
    assert spec.budget is None and spec.ratio is None and not spec.takes_budget
    assert PolicySpec.parse("full").to_text() == "full"


@pytest.mark.parametrize(
    "text, message",
    [
        ("nope", "Unknown policy 'nope'"),
        ("h2o:recent", "key=value"),
        ("h2o:bits=4", "Unknown parameter 'bits'"),
        ("quant:bits=3", "bits must be one of 8, 4, 2"),
        ("h2o:budget=1.5", "budget must be a whole number"),
        ("h2o:ratio=nan", "ratio must be a number"),
        ("snapkv+h2o", "at most one selector"),
    ],
)
def test_bad_specs_say_what_is_wrong(text, message):
    with pytest.raises(PolicyError, match=message):
        PolicySpec.parse(text)


def test_untrusted_dict_is_validated():
    with pytest.raises(PolicyError):
        PolicySpec.from_dict({"policy": "h2o", "params": {"h2o": {"recent": -3}}})
    with pytest.raises(PolicyError):
        PolicySpec.from_dict({"params": {}})


def test_metrics_by_hand():
    assert metrics.format_bytes(1023) == "1,023 bytes"
    assert metrics.format_bytes(1536) == "1.5 KiB"
    assert metrics.format_bytes(3 * 2**30) == "3.0 GiB"
    assert metrics.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert metrics.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert metrics.first_divergence([1, 2, 3], [1, 2]) == 2
    # two forced tokens with probabilities 1/2 and 1/8: perplexity = (2 * 8) ** (1/2) = 4
    assert metrics.perplexity([math.log(0.5), math.log(0.125)]) == pytest.approx(4.0)
    assert math.isnan(metrics.perplexity([]))


def test_of_completes_a_name_or_text_form_the_way_the_engine_and_cli_take_it():
    spec = PolicySpec.parse("h2o:recent=4,budget=32")
    assert PolicySpec.of(spec) is spec
    assert PolicySpec.of("h2o:recent=4,budget=32") == spec
    # explicit parameters override the text's; an explicit budget or ratio replaces the text's
    assert PolicySpec.of("h2o:recent=4,budget=32", {"recent": 8}).params_dict()["h2o"]["recent"] == 8
    assert PolicySpec.of("h2o:recent=4,budget=32", {"recent": 8}).budget == 32
    by_ratio = PolicySpec.of("h2o:budget=32", ratio=0.5)
    assert (by_ratio.budget, by_ratio.ratio) == (None, 0.5)
    assert PolicySpec.of("quant", {"bits": 8}, budget=16).takes_budget is False  # a store takes no budget
    with pytest.raises(TypeError):
        PolicySpec.of(spec, budget=8)
    with pytest.raises(PolicyError, match="Unknown policy"):
        PolicySpec.of("nope", budget=8)


def test_budget_notes_name_the_parameters_and_a_window_the_budget_sets_is_no_setting():
    from kvviz.policies.spec import budget_notes

    # a sliding window and StreamingLLM keep what the budget leaves: nothing is capped, no warning
    assert budget_notes(PolicySpec.parse("window:budget=16"), 40) == [
        ("info", "With 16 entries per layer and KV head, window keeps the 16 most recent tokens (the whole budget).")
    ]
    assert budget_notes(PolicySpec.parse("streaming_llm:n_sink=4,budget=16"), 40) == [
        ("info", "With 16 entries per layer and KV head, streaming_llm keeps the first 4 tokens (n_sink) and the 12 most"
         " recent tokens (the rest of the budget).")
    ]
    assert budget_notes(PolicySpec.parse("sparse_pattern:n_global=2,block_size=4,random_blocks=3,budget=30"), 40) == [
        ("info", "With 30 entries per layer and KV head, sparse_pattern keeps the first 2 tokens (n_global) and the 16"
         " most recent tokens (the rest of the budget), and the 12 other entries in its random blocks (random_blocks x block_size).")
    ]
    assert budget_notes(PolicySpec.parse("tova:budget=8"), 40) == []  # protects nothing


def test_h2o_notes_speak_of_recent_and_heavy_hitters():
    from kvviz.policies.spec import budget_notes

    assert budget_notes(PolicySpec.parse("h2o:recent=48,budget=64"), 150) == [
        ("info", "With 64 entries per layer and KV head, h2o keeps the 48 most recent tokens (recent), and the 16 other"
         " entries with the highest accumulated attention (heavy hitters).")
    ]
    full = budget_notes(PolicySpec.parse("h2o:recent=16,budget=16"), 40)  # fits, but leaves nothing to the scores
    assert [level for level, _ in full] == ["info", "warning"]
    assert full[1].text.startswith("recent = 16 fills the whole budget (16 entries") and "window" not in full[1].text
    over = budget_notes(PolicySpec.parse("h2o:recent=16,budget=9"), 40)
    assert over[0] == ("info", "With 9 entries per layer and KV head, h2o keeps the 9 most recent tokens (recent).")
    assert over[1].level == "warning" and over[1].text.startswith("recent = 16 asks to protect more entries than the budget holds (9 ")
    assert over[1].text.endswith("Raise the budget or lower recent.")


@pytest.mark.parametrize(
    "text, prompt_len, levels",
    [
        ("h2o:recent=15,budget=16", 40, ["info"]),  # one entry left for a heavy hitter: nothing is short
        ("h2o:recent=16,budget=16", 40, ["info", "warning"]),
        ("h2o:recent=17,budget=16", 40, ["info", "warning"]),
        ("lru:recent=8,budget=8", 40, ["info", "warning"]),
        ("lfu:recent=8,budget=9", 40, ["info"]),
        ("knorm:n_sink=2,recent=3,budget=6", 40, ["info"]),
        ("knorm:n_sink=2,recent=3,budget=5", 40, ["info", "warning"]),
        ("snapkv:window=8,budget=8", 40, ["info", "warning"]),
        ("streaming_llm:n_sink=4,budget=5", 40, ["info"]),  # 4 sinks and a 1-token window: what it is asked
    ],
)
def test_a_warning_only_when_the_settings_do_not_leave_room(text, prompt_len, levels):
    from kvviz.policies.spec import budget_notes

    assert [n.level for n in budget_notes(PolicySpec.parse(text), prompt_len)] == levels


def test_the_default_h2o_on_the_live_pages_default_prompt_is_clean():
    """The Live page opens on h2o at the default ratio with the 37-token chat example: no warning."""
    from kvviz.policies.spec import budget_notes

    spec = PolicySpec.parse("h2o")
    assert spec.resolve_budget(37) == 9  # 0.25 x 37 = 9.25
    assert [n.level for n in budget_notes(spec, 37)] == ["info"]
