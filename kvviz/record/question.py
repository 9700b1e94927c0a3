"""Where a prompt's question starts, for query-agnostic runs (compress the context, then ask).

A prompt's question is its last paragraph: the text after its last blank line. The passkey
prompt ends so ("...\\n\\nWhat is the pass key? Answer with the number."), and so does a QA
prompt written as a context, a blank line, then the question. In tokens, the question starts at
the latest position from which the prompt's remaining tokens still hold the whole question
(under a chat template, the template's closing tokens follow it).
"""

from __future__ import annotations

from kvviz.i18n import _
from kvviz.record.text import PromptError


def question_text(text: str) -> str | None:
    """The prompt's last paragraph, or None when it has no blank line before a last paragraph."""
    head, sep, tail = text.rstrip().rpartition("\n\n")
    if not sep or not head.strip() or not tail.strip():
        return None
    return tail.strip()


def question_start(tokenizer, ids: list[int], text: str) -> int:
    """The index of the first token of ``text``'s question in ``ids`` (the prompt's tokens);
    PromptError when the prompt has no question or its tokens do not hold it after a context."""
    question = question_text(text)
    if question is None:
        raise PromptError(_(
            "To ask the question after compressing the context, end the prompt with its question as the last"
            " paragraph (after a blank line), as the passkey example does."
        ))
    for k in range(len(ids) - 1, 0, -1):
        if question in tokenizer.decode(ids[k:]):
            return k
    raise PromptError(_("The prompt's last paragraph was not found in its tokens, or nothing comes before it."))
