"""Turning prompts into token ids and token ids into display strings.

Without a chat template the prompt is tokenized exactly as the model's transformers tokenizer
does by default (``tokenizer(text).input_ids``), so kvviz and transformers agree token for token.
"""

from __future__ import annotations


class PromptError(ValueError):
    """A prompt that cannot be run: empty, or longer than the model's context."""


def encode_prompt(tokenizer, text: str, chat: bool = False, max_context: int | None = None) -> list[int]:
    if text is None or not text.strip():
        raise PromptError("The prompt is empty: type some text or pick an example.")
    if chat:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if not isinstance(ids, list):  # BatchEncoding in transformers 5.x
            ids = ids["input_ids"]
        if ids and isinstance(ids[0], list):
            ids = ids[0]
    else:
        ids = tokenizer(text).input_ids
    ids = [int(i) for i in ids]
    if not ids:
        raise PromptError("The prompt produced no tokens.")
    if max_context is not None and len(ids) > max_context:
        raise PromptError(
            f"The prompt is {len(ids)} tokens long, longer than the model's context of {max_context} tokens."
        )
    return ids


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    """One display string per token id (decoded one by one, so spaces and newlines stay visible)."""
    return [tokenizer.decode([int(i)]) for i in ids]
