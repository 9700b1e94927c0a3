"""kvviz.record.examples: the built-in examples."""

import pytest

from kvviz.record import examples as data


def test_examples_are_listed_in_order_with_descriptions():
    names = data.example_names()
    assert names == list(data.EXAMPLES) and len(names) == 4
    assert data.EXAMPLES[data.CHAT_EXAMPLE] == "What is the capital of France?"
    assert set(data.DESCRIPTIONS) == set(names) == set(data.CHAT_BY_DEFAULT)
    assert all(text.strip() for text in data.EXAMPLES.values())


def test_passkey_sits_at_the_requested_depth():
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        text, key = data.passkey_prompt(1000, depth, passkey="68221")
        assert key == "68221"
        assert text.count("The pass key is 68221.") == 1
        body = text[len(data.PASSKEY_INTRO) : -len(data.PASSKEY_QUESTION)]
        where = body.index("The pass key is 68221.") / len(body)
        assert abs(where - depth) < 0.05, (depth, where)
    assert text.startswith(data.PASSKEY_INTRO)
    assert text.endswith("What is the pass key? Answer with the number.")


def test_passkey_is_drawn_from_the_seed():
    assert data.passkey_prompt(200, 0.5, seed=1) == data.passkey_prompt(200, 0.5, seed=1)
    keys = {data.passkey_prompt(200, 0.5, seed=s)[1] for s in range(20)}
    assert len(keys) > 15 and all(len(k) == 5 and k.isdigit() for k in keys)


def test_filler_grows_with_the_requested_length():
    short, _ = data.passkey_prompt(100, 0.5)
    long, _ = data.passkey_prompt(4000, 0.5)
    assert 20 < len(long) / len(short) < 40  # the intro, needle and question are a fixed overhead


@pytest.mark.parametrize("kwargs", [dict(filler_tokens=-1, depth=0.5), dict(filler_tokens=10, depth=1.5),
                                    dict(filler_tokens=10, depth=0.5, passkey="abc")])
def test_passkey_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        data.passkey_prompt(**kwargs)


def test_long_document_is_long_varied_prose():
    text = data.long_document()
    words = text.split()
    assert len(words) > 3000
    assert len(set(words)) > 1000  # not a repeated paragraph
    assert text.startswith("Keepers of the Light")
