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


def test_budget_notes_do_not_take_a_window_that_the_budget_sets_for_a_setting():
    from kvviz.policies.spec import budget_notes

    # a sliding window and StreamingLLM keep what the budget leaves: nothing is capped
    assert budget_notes(PolicySpec.parse("window:budget=16"), 40) == [
        "With 16 entries per layer and KV head, window always keeps the 16 most recent tokens."
    ]
    assert budget_notes(PolicySpec.parse("streaming_llm:n_sink=4,budget=16"), 40) == [
        "With 16 entries per layer and KV head, streaming_llm always keeps the first 4 tokens (sinks) and the 12 most recent tokens."
    ]
    # a setting the budget cannot hold is capped, and said so
    capped = budget_notes(PolicySpec.parse("knorm:n_sink=2,recent=3,budget=5"), 40)
    assert len(capped) == 2 and "no room is left" in capped[1]
