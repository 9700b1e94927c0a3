"""The one-click demos hold on the real model: at a quarter of the passkey prompt h2o loses the
pass key and snapkv with an 8-token window keeps it (the story the README tells)."""

from __future__ import annotations

import pytest

from kvviz.record import examples as data
from kvviz.runtime import engine
from kvviz.policies.spec import PolicySpec
from kvviz.record.text import decode, encode_prompt


@pytest.mark.parametrize("name", list(data.PRESETS))
def test_preset_tells_its_story(smollm, name):
    preset = data.PRESETS[name]
    text, key = data.passkey_prompt(data.DEFAULT_PASSKEY_FILLER, data.DEFAULT_PASSKEY_DEPTH)
    assert preset.example == data.PASSKEY_EXAMPLE and data.EXAMPLES[preset.example] == text
    ids = encode_prompt(smollm.tokenizer, text, chat=preset.chat)
    trace = engine.run(smollm.model, smollm.tokenizer, ids, PolicySpec.parse(preset.spec), max_new_tokens=preset.new_tokens)
    answer = decode(smollm.tokenizer, trace.generated_ids)
    keeps = "keeps it" in name
    assert (key in answer) == keeps, answer
    assert trace.kv_bytes[-1] < 0.3 * trace.kv_bytes_full[-1]  # a quarter of the prompt, both times
