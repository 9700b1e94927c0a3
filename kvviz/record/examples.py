"""Built-in example prompts, all written for kvviz.

- ``CHAT_QUESTION``: a short question that SmolLM2 answers correctly with its chat template.
- ``passkey_prompt()``: a pass key hidden at a chosen depth in filler text of a chosen length,
  ending with a question that asks for it (retrieval under a compressed cache).
- ``long_document()``: an essay on the history of lighthouses (about 4,300 SmolLM2 tokens),
  for perplexity of a long teacher-forced continuation.
- ``CODE_SNIPPET``: a short Python function with its tests.

``EXAMPLES`` maps a display name to the text; ``example_names()`` lists the names in order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from kvviz.i18n import N_  # marks the names and descriptions the sidebar shows translated

CHAT_QUESTION = "What is the capital of France?"

# Filler for the passkey prompt: plain sentences with nothing worth remembering. One pass over
# all of them is about PASSKEY_TOKENS_PER_ROUND SmolLM2 tokens (tests check the calibration).
PASSKEY_FILLER = (
    "The road runs past the old mill and on toward the hills.",
    "A light wind moves the reeds along the edge of the pond.",
    "Somebody left a blue bicycle leaning against the fence.",
    "The baker opens early and closes when the bread is gone.",
    "Clouds drift over the valley and the afternoon stays mild.",
    "A dog sleeps in the shade beside the door of the shop.",
    "The river is low this time of year and the stones show.",
    "Children walk home from school in twos and threes.",
)
PASSKEY_TOKENS_PER_ROUND = 99
PASSKEY_INTRO = (
    "Somewhere in the long text below there is one important fact. "
    "Read everything carefully and remember it.\n\n"
)
PASSKEY_QUESTION = "\n\nWhat is the pass key? Answer with the number."

CODE_SNIPPET = '''def moving_average(values, window):
    """Average of each run of `window` consecutive values, sliding one step at a time."""
    if window <= 0:
        raise ValueError("window must be positive")
    if window > len(values):
        return []
    total = sum(values[:window])
    averages = [total / window]
    for i in range(window, len(values)):
        total += values[i] - values[i - window]  # slide: add the new value, drop the oldest
        averages.append(total / window)
    return averages


def test_moving_average():
    assert moving_average([1, 2, 3, 4, 5], 2) == [1.5, 2.5, 3.5, 4.5]
    assert moving_average([10, 20, 30], 3) == [20.0]
    assert moving_average([1, 2], 5) == []
'''

# A retrieved passage that appears twice (as in a RAG prompt that fetched it for two queries),
# with a question after it: the Dedup page's one-click example.
REPEATED_PASSAGE = (
    "The Harbor Museum opened in 1911 in the old customs house by the river. Its collection holds ship models, "
    "sea charts, brass instruments and the great lens of the North Point lighthouse, taken down in 1962."
)
REPEATED_PASSAGE_EXAMPLE = (
    f"Document 1: {REPEATED_PASSAGE}\n\nDocument 2: {REPEATED_PASSAGE}\n\n"
    "Question: In which year was the lens of the North Point lighthouse taken down?\nAnswer:"
)

LONG_DOCUMENT_PATH = Path(__file__).resolve().parents[1] / "data" / "long_document.txt"

CHAT_EXAMPLE = N_("Chat: capital of France")
PASSKEY_EXAMPLE = N_("Passkey retrieval")
LONG_EXAMPLE = N_("Long document: history of lighthouses")
CODE_EXAMPLE = N_("Code: moving average")

# Which examples read best through the model's chat template.
CHAT_BY_DEFAULT = {CHAT_EXAMPLE: True, PASSKEY_EXAMPLE: True, LONG_EXAMPLE: False, CODE_EXAMPLE: False}

DESCRIPTIONS = {
    CHAT_EXAMPLE: N_("A short question; SmolLM2 answers it in one sentence."),
    PASSKEY_EXAMPLE: N_("A pass key hidden in filler text; can the model still find it with a compressed cache?"),
    LONG_EXAMPLE: N_("An original essay of about 4,300 tokens, for perplexity over a long context."),
    CODE_EXAMPLE: N_("A small Python function with its tests."),
}


@lru_cache(maxsize=1)
def long_document() -> str:
    """The lighthouse essay (package data, about 4,300 SmolLM2 tokens)."""
    return LONG_DOCUMENT_PATH.read_text(encoding="utf-8")


def passkey_prompt(
    filler_tokens: int, depth: float, passkey: str | None = None, seed: int = 0
) -> tuple[str, str]:
    """A pass key hidden in about ``filler_tokens`` SmolLM2 tokens of filler.

    depth: where the needle sits, 0.0 (start of the filler) to 1.0 (end). passkey: the digits to
    hide; by default 5 random digits drawn from ``seed``. Returns (prompt text, passkey).
    """
    if filler_tokens < 0:
        raise ValueError(f"filler_tokens must be >= 0, got {filler_tokens}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be between 0 and 1, got {depth}")
    if passkey is None:
        passkey = str(random.Random(seed).randint(10000, 99999))
    passkey = str(passkey).strip()
    if not passkey.isdigit():
        raise ValueError(f"the pass key must be digits, got {passkey!r}")

    tokens_per_sentence = PASSKEY_TOKENS_PER_ROUND / len(PASSKEY_FILLER)
    n_sentences = round(filler_tokens / tokens_per_sentence)
    sentences = [PASSKEY_FILLER[i % len(PASSKEY_FILLER)] for i in range(n_sentences)]
    needle = f"The pass key is {passkey}. Remember it. {passkey} is the pass key."
    sentences.insert(round(depth * n_sentences), needle)
    return PASSKEY_INTRO + " ".join(sentences) + PASSKEY_QUESTION, passkey


DEFAULT_PASSKEY_FILLER = 500
DEFAULT_PASSKEY_DEPTH = 0.5

EXAMPLES: dict[str, str] = {
    CHAT_EXAMPLE: CHAT_QUESTION,
    PASSKEY_EXAMPLE: passkey_prompt(DEFAULT_PASSKEY_FILLER, DEFAULT_PASSKEY_DEPTH)[0],
    LONG_EXAMPLE: long_document(),
    CODE_EXAMPLE: CODE_SNIPPET,
}


def example_names() -> list[str]:
    """Names of the built-in examples, in the order a picker shows them."""
    return list(EXAMPLES)


@dataclass(frozen=True)
class Preset:
    """A demo in one click: an example prompt, a policy and how many tokens to generate."""

    example: str
    spec: str  # a PolicySpec in text form
    new_tokens: int
    chat: bool
    story: str  # what to look at, for the page (N_-marked: the page shows it translated)


# Checked on SmolLM2-135M-Instruct (CPU, float32, greedy) by tests/integration/test_presets.py:
# at a quarter of the 585-token passkey prompt, h2o (8 recent entries) answers "The pass is a special
# pass that is used for passing over" and snapkv with its default 32-token window "604."; snapkv with an
# 8-token window answers the full key, 60494.
PRESETS: dict[str, Preset] = {
    N_("Pass key: h2o at 25% loses it"): Preset(
        PASSKEY_EXAMPLE, "h2o:ratio=0.25", 12, True,
        N_("H2O keeps the tokens that received the most attention so far; the pass key, read once in the middle "
           "of the filler, is not among them, and the answer comes out wrong."),
    ),
    N_("Pass key: snapkv (window 8) at 25% keeps it"): Preset(
        PASSKEY_EXAMPLE, "snapkv:window=8,ratio=0.25", 12, True,
        N_("SnapKV lets the last 8 prompt tokens (the question) vote for what to keep: they look at the pass key, "
           "so it stays, and the answer is right. With its default 32-token window the votes are spread over "
           "filler and the key is lost."),
    ),
}
