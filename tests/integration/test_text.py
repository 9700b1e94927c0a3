"""Text in any language against SmolLM2's own tokenizer: the texts kvviz shows per token join to
the tokenizer's decode of the whole sequence, and no character is shown as U+FFFD."""

from __future__ import annotations

import pytest

from kvviz.record.text import PIECE, char_groups, decode, encode_prompt, token_texts

TEXTS = {
    "chinese": "KV缓存是什么？它存储键和值。",
    "emoji": "🙂🙂 KV缓存是什么？ 👩‍🔬 and 👍🏽",
    "combining": "e\u0301 cafe\u0301 n\u0303o Ame\u0301lie",  # e + COMBINING ACUTE, not é
    "rtl": "שלום עולם مرحبا بالعالم",
    "mixed": "The cache 缓存 (קאש) ✓",
}


@pytest.mark.parametrize("name", list(TEXTS))
def test_token_texts_join_to_the_tokenizers_decode(smollm, name):
    tok = smollm.tokenizer
    ids = encode_prompt(tok, TEXTS[name])
    texts = token_texts(tok, ids)
    assert len(texts) == len(ids)
    assert "".join(texts) == decode(tok, ids) == tok.decode(ids)
    assert "\ufffd" not in "".join(texts)
    # one chip per group: each group's text is a whole run of characters of the decoded text
    shown = [texts[b - 1] for _, b in char_groups(texts)]
    assert "".join(shown) == TEXTS[name]


def test_pieces_of_one_character_form_one_group(smollm):
    tok = smollm.tokenizer
    ids = tok("🙂").input_ids
    assert len(ids) >= 2 and all("\ufffd" in tok.decode([i]) for i in ids)  # the tokenizer splits the emoji
    texts = token_texts(tok, ids)
    assert texts[:-1] == [PIECE] * (len(ids) - 1) and texts[-1] == "🙂"
    assert char_groups(texts) == [(0, len(ids))]


def test_a_combining_mark_stays_with_its_letter(smollm):
    tok = smollm.tokenizer
    ids = tok("e\u0301").input_ids
    texts = token_texts(tok, ids)
    assert [texts[b - 1] for _, b in char_groups(texts)] == ["e\u0301"]


def test_an_unfinished_character_keeps_the_replacement_like_decode(smollm):
    tok = smollm.tokenizer
    ids = tok("缓").input_ids[:-1]  # the run stopped in the middle of a character
    texts = token_texts(tok, ids)
    assert "".join(texts) == tok.decode(ids)


def test_chat_prompt_and_generation_keep_the_text(smollm):
    from kvviz.runtime import engine

    tok = smollm.tokenizer
    ids = encode_prompt(tok, "🙂🙂 KV缓存是什么？", chat=True)
    trace = engine.run(smollm.model, tok, ids, "full", max_new_tokens=6)
    assert "🙂🙂 KV缓存是什么？" in "".join(trace.tokens[: trace.prompt_len])
    assert "".join(trace.tokens) == tok.decode(trace.all_ids)


def test_a_prompt_over_the_size_limit_is_refused(smollm):
    from kvviz.record.text import MAX_PROMPT_CHARS, PromptError

    with pytest.raises(PromptError, match="at most"):
        encode_prompt(smollm.tokenizer, "a" * (MAX_PROMPT_CHARS + 1))


def test_search_marks_every_token_of_a_match(smollm):
    from kvviz.record import examples as data
    from kvviz.record.text import match_positions

    tok = smollm.tokenizer
    text, key = data.passkey_prompt(200, 0.5, seed=3)
    ids = encode_prompt(tok, text, chat=True)
    texts = token_texts(tok, ids)
    hits = match_positions(texts, key)
    # the key appears twice in the needle sentence; the marked tokens spell it out, nothing else
    marked = "".join(texts[p] for p in hits)
    assert marked.count(key) == 2 or marked.replace(" ", "").count(key) == 2
    assert all(any(ch.isdigit() for ch in texts[p]) for p in hits)
    assert match_positions(texts, "缓存") == [] and match_positions(texts, "  ") == []
    cn = token_texts(tok, tok("KV缓存是什么").input_ids)
    assert "".join(cn[p] for p in match_positions(cn, "缓存")) in ("缓存", "缓存是", "KV缓存")
