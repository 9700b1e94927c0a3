"""The calculator's figure for a loaded model against the bytes its real cache held: a short
full-cache run through ``kvviz.runtime.engine`` and, at every step, ``Trace.kv_bytes`` beside what
``kvviz.calculator.memory`` derives from the model's config alone."""

from __future__ import annotations

from dataclasses import dataclass

from kvviz.calculator import memory as calculator
from kvviz.i18n import _
from kvviz.runtime import engine

TORCH_TO_CACHE_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass
class CacheCheck:
    model: str
    dtype: str  # the cache dtype the calculator was asked for (the model's)
    prompt_tokens: int
    per_token_formula: str
    rows: list[dict]  # step, tokens held, bytes measured, bytes calculated

    @property
    def agree(self) -> bool:
        return all(r["measured bytes"] == r["calculated bytes"] for r in self.rows)


def check_calculator(model, tokenizer, ids: list[int], new_tokens: int = 4, max_prompt: int = 256, name: str = "") -> CacheCheck:
    """Run the full cache on the first ``max_prompt`` tokens of ``ids`` for ``new_tokens`` steps
    and compare each step's ``kv_bytes`` with the calculator's bytes for that many tokens."""
    ids = list(ids)[:max_prompt]
    arch = calculator.architecture_from_config(model.config.to_dict(), name=name or "loaded model", source="the loaded model's config")
    trace = engine.run(model, tokenizer, ids, "full", max_new_tokens=new_tokens, stop_at_eos=False, cuda_graphs=False)
    dtype = TORCH_TO_CACHE_DTYPE.get(trace.dtype)
    if dtype is None:
        raise calculator.CalcError(_("the model runs in {dtype}, which the calculator does not know.").format(dtype=trace.dtype))
    rows = []
    for step, measured in enumerate(trace.kv_bytes):
        held = trace.prompt_len + step  # the prompt, then one more token per step (see Trace)
        est = calculator.estimate(arch, calculator.Scenario(context=held, dtype=dtype))
        rows.append({"step": step, "tokens held": held, "measured bytes": int(measured), "calculated bytes": est.bytes_per_sequence})
    formula = calculator.estimate(arch, calculator.Scenario(context=1, dtype=dtype)).formulas["per_token"]
    return CacheCheck(model=name or arch.name, dtype=dtype, prompt_tokens=len(ids), per_token_formula=formula, rows=rows)
