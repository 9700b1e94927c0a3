"""A real comparison on the tiny random Llama of tests/conftest.py (2 layers, 2 KV heads): the
engine runs, nothing is hand-made. Shared by the bundle, comparison and chart tests."""

from __future__ import annotations

from kvviz.compare import run as comparison
from kvviz.runs.bundle import RunSettings
from kvviz.policies.spec import PolicySpec

PROMPT = [(7 * i + 3) % 120 + 1 for i in range(40)]
SPECS = ("h2o:recent=4,budget=24", "quant:bits=4", "streaming_llm:budget=24")
NEW_TOKENS = 5


class Tok:
    """What the engine asks of a tokenizer: no end of sequence, a display string per id."""

    eos_token_id = None

    def decode(self, ids):
        return " ".join(map(str, ids))


def settings(specs=SPECS, new_tokens: int = NEW_TOKENS, **kw) -> RunSettings:
    values = dict(
        model="tiny-llama", prompt_name="Custom", prompt_text="forty numbers", chat=False,
        policies=[PolicySpec.parse(s) for s in specs], max_new_tokens=new_tokens,
    )
    return RunSettings(**(values | kw))


def tiny_comparison(model, specs=SPECS, new_tokens: int = NEW_TOKENS, **kw):
    return comparison.compare(model, Tok(), PROMPT, settings(specs, new_tokens), model_name="tiny-llama", **kw)
