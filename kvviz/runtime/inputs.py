"""One check of a run's inputs, before any work is spent on them: the prompt, the tokens asked
for, the model's context, and a budget (or ratio) that fits the prompt.

The engine, the Live run, the comparison and the sweep all ask ``check_run`` (and ``prompt_ids``
for a prompt typed as text); what they refuse is an ``InputError`` whose message is one line, fit
to show to a person.

``check_limits`` applies the operator's caps on a visitor's run (``kvviz.runtime.settings.Limits``:
prompt tokens, new tokens, runs of a sweep); the pages apply it to every job they start, the CLI
never does.
"""

from __future__ import annotations

from typing import Sequence

from kvviz.policies import PolicyError
from kvviz.policies.spec import PolicySpec
from kvviz.record.text import PromptError, encode_prompt
from kvviz.runtime.settings import Limits


class InputError(PromptError, PolicyError):
    """Input a run cannot use; the message is one line. It is a PromptError and a PolicyError
    (both ValueErrors) too, so code that catches either still catches it."""


def prompt_ids(tokenizer, text: str, *, chat: bool, max_context: int | None = None) -> list[int]:
    """The prompt's token ids (``encode_prompt``); InputError when it is empty, too large or
    longer than the model's context."""
    try:
        return encode_prompt(tokenizer, text, chat=chat, max_context=max_context)
    except PromptError as exc:
        raise InputError(str(exc)) from None


def check_run(
    prompt_len: int,
    new_tokens: int,
    *,
    max_context: int | None = None,
    specs: Sequence[PolicySpec] = (),
    max_new_tokens: int | None = None,
    number_specs: bool = False,
    tokens_name: str = "new tokens",
) -> None:
    """Raise InputError when a run of ``new_tokens`` tokens (generated or forced) after a prompt
    of ``prompt_len`` tokens cannot be run: an empty prompt, fewer than 1 (or more than
    ``max_new_tokens``) new tokens, a policy in ``specs`` whose budget does not fit the prompt
    (named p1, p2, ... when ``number_specs``), or more tokens than the model's context."""
    if prompt_len < 1:
        raise InputError("The prompt is empty.")
    if max_new_tokens is not None and not 1 <= new_tokens <= max_new_tokens:
        raise InputError(f"New tokens must be between 1 and {max_new_tokens}, not {new_tokens}.")
    if new_tokens < 1:
        raise InputError(f"New tokens must be at least 1, not {new_tokens}.")
    for i, spec in enumerate(specs, start=1):
        try:
            spec.resolve_budget(prompt_len)  # a budget larger than the prompt, no room after the sinks, ...
        except PolicyError as exc:
            raise InputError(f"p{i} ({spec.to_text()}): {exc}" if number_specs else str(exc)) from None
    if max_context and prompt_len + new_tokens > max_context:
        raise InputError(
            f"The prompt ({prompt_len} tokens) plus {new_tokens} {tokens_name} exceeds the model's context of {max_context}."
        )


def check_limits(limits: Limits, *, prompt_tokens: int, new_tokens: int, runs: int = 1) -> None:
    """Raise InputError, naming the operator's setting, when a visitor's run is larger than this
    server allows: a longer prompt, more new (or forced) tokens per run, more runs in a sweep."""
    if prompt_tokens > limits.max_prompt_tokens:
        raise InputError(
            f"The prompt has {prompt_tokens:,} tokens; this server runs prompts of at most {limits.max_prompt_tokens:,} "
            "(its operator's setting KVVIZ_MAX_PROMPT_TOKENS)."
        )
    if new_tokens > limits.max_new_tokens:
        raise InputError(
            f"{new_tokens:,} tokens per run asked for; this server runs at most {limits.max_new_tokens:,} "
            "(its operator's setting KVVIZ_MAX_NEW_TOKENS)."
        )
    if runs > limits.max_sweep_runs:
        raise InputError(
            f"This sweep has {runs} runs; this server runs at most {limits.max_sweep_runs} in one sweep "
            "(its operator's setting KVVIZ_MAX_SWEEP_RUNS): pick fewer policies, budgets, depths or lengths."
        )
