"""Text in and out of the model: prompts to token ids, token ids to the text each token shows.

Without a chat template the prompt is tokenized exactly as the model's transformers tokenizer
does by default (``tokenizer(text).input_ids``), so kvviz and transformers agree token for token.

Byte-level tokenizers (SmolLM2's, GPT-2's) split a character of several UTF-8 bytes (Chinese,
emoji, a combining accent) over several tokens; decoded one at a time, each piece is U+FFFD.
``token_texts`` decodes the pieces together: the token that completes a character carries its
text, and the pieces before it carry ``""`` (``PIECE``), so that ``"".join(token_texts(...))``
is the tokenizer's own decode of the whole sequence. A combining mark (or a zero-width joiner
and what it joins) is kept with the character it modifies, so no view shows a lone accent.
``char_groups`` recovers the groups for views that draw one chip per character.

No torch here: the tokenizer is passed in.
"""

from __future__ import annotations

import unicodedata

from kvviz.i18n import _

MAX_PROMPT_CHARS = 200_000  # longer text is refused before it is tokenized (the context is 8k tokens)
PIECE = ""  # the text of a token whose bytes the next token completes
REPLACEMENT = "\ufffd"
MAX_GROUP = 16  # tokens one character (with its combining marks) may span before we give up
_JOINERS = {"\u200d"}  # zero-width joiner: the next character belongs to the same glyph


class PromptError(ValueError):
    """A prompt that cannot be run: empty, too large, or longer than the model's context."""


def encode_prompt(tokenizer, text: str, chat: bool = False, max_context: int | None = None) -> list[int]:
    if text is None or not text.strip():
        raise PromptError(_("The prompt is empty: type some text or pick an example."))
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(
            _("The prompt is {n} characters long; kvviz takes prompts of at most {most} characters.").format(
                n=f"{len(text):,}", most=f"{MAX_PROMPT_CHARS:,}")
        )
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
        raise PromptError(_("The prompt produced no tokens."))
    if max_context is not None and len(ids) > max_context:
        raise PromptError(
            _("The prompt is {n} tokens long, longer than the model's context of {context} tokens.").format(
                n=len(ids), context=max_context)
        )
    return ids


def decode(tokenizer, ids) -> str:
    """The text of a whole id sequence, as the tokenizer decodes it."""
    return tokenizer.decode([int(i) for i in ids])


def cut_character_note(text: str, who: str | None = None) -> str | None:
    """A sentence saying why ``text`` ends in U+FFFD, or None when it does not: the generation
    stopped after some bytes of a character of several bytes (the token limit fell inside it), so
    the tokenizer shows the replacement character for the bytes it has. (A model may also write
    U+FFFD itself; the sentence says so.)"""
    if not text.endswith(REPLACEMENT):
        return None
    return _("{who} ends in {char} (U+FFFD): generation stopped partway through a character of several bytes "
             "(Chinese, an emoji, an accent), so its last bytes never came and the tokenizer shows the replacement "
             "character in their place. A few more new tokens would complete it (unless the model wrote U+FFFD itself).").format(
        who=who or _("The output"), char=REPLACEMENT)


def _attaches(text: str) -> bool:
    """True when ``text`` starts with a mark that belongs to the character before it."""
    ch = text[:1]
    return bool(ch) and (unicodedata.category(ch) in ("Mn", "Me") or ch in _JOINERS or "\ufe00" <= ch <= "\ufe0f")


def token_texts(tokenizer, ids) -> list[str]:
    """One display string per token id; byte pieces of one character decoded together (see the
    module's docstring): ``"".join(result) == decode(tokenizer, ids)`` for complete text."""
    ids = [int(i) for i in ids]
    batch = getattr(tokenizer, "batch_decode", None)
    single = (batch([[i] for i in ids]) if batch else [tokenizer.decode([i]) for i in ids]) if ids else []
    out = list(single)
    i = 0
    while i < len(ids):
        if REPLACEMENT not in single[i]:
            i += 1
            continue
        # an incomplete piece: extend until the group decodes without a replacement character
        for j in range(i + 1, min(len(ids), i + MAX_GROUP)):
            text = tokenizer.decode(ids[i : j + 1])
            if REPLACEMENT not in text:
                out[i:j] = [PIECE] * (j - i)
                out[j] = text
                i = j + 1
                break
        else:
            if i + MAX_GROUP >= len(ids):  # the sequence ends mid-character: decode the rest together, as decode does
                out[i:] = [PIECE] * (len(ids) - i - 1) + [tokenizer.decode(ids[i:])]
                break
            i += 1  # a real U+FFFD in the text: keep the single decode
    _attach_marks(out)
    return out


def _attach_marks(texts: list[str]) -> None:
    """Move a leading combining mark (or a joined character) onto the token before it, in place."""
    for k in range(1, len(texts)):
        if not texts[k]:
            continue
        prev = k - 1
        while prev >= 0 and texts[prev] == PIECE:
            prev -= 1
        if prev < 0:
            continue
        if _attaches(texts[k]) or texts[prev][-1:] in _JOINERS:
            texts[k] = texts[prev] + texts[k]
            for p in range(prev, k):
                texts[p] = PIECE


def char_groups(texts: list[str]) -> list[tuple[int, int]]:
    """(start, stop) of each group of positions that shows one piece of text: a token alone, or
    the byte pieces of a character with the token that completes it. Trailing pieces with no
    completion form a group of their own."""
    groups, start = [], 0
    for k, t in enumerate(texts):
        if t != PIECE:
            groups.append((start, k + 1))
            start = k + 1
    if start < len(texts):
        groups.append((start, len(texts)))
    return groups



def match_positions(texts: list[str], query: str, max_matches: int = 500) -> list[int]:
    """Positions whose text overlaps an occurrence of ``query`` (case-insensitive) in the joined
    text, with the byte pieces before each such token; at most ``max_matches`` occurrences."""
    query = (query or "").strip().casefold()
    if not query:
        return []
    owner: list[int] = []  # owner[c]: the position whose text holds character c of the joined text
    for pos, t in enumerate(texts):
        owner.extend([pos] * len(t))
    joined = "".join(texts).casefold()
    if len(joined) != len(owner):  # casefold changed lengths (ß -> ss): search the plain lowercase text
        joined = "".join(texts).lower()
        if len(joined) != len(owner):
            return []
    hits: set[int] = set()
    start, found = 0, 0
    while found < max_matches:
        at = joined.find(query, start)
        if at < 0:
            break
        hits.update(owner[at : at + len(query)])
        start, found = at + 1, found + 1
    groups = char_groups(texts)
    out = set()
    for a, b in groups:
        if b - 1 in hits:
            out.update(range(a, b))
    return sorted(out)
