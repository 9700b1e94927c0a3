"""A hand-made Trace for the Live policy tests: 2 layers × 2 KV heads, a 6-token prompt and 4
generated tokens, with every token state present at step 1.

At step 1 for layer 0 / KV head 0 (the selector protects 1 sink and 2 recent tokens; budget 5):
  0 sink · 1 kept · 2 evicted (at step 0) · 3 evicted_now (at step 1) · 4 high_score (score 10)
  5, 6 recent · 7 next (generated at step 1) · 8, 9 pending
Over all layers and heads, position 3 is still held by layer 1 / head 1 at step 1: partial.
"""

from __future__ import annotations

import numpy as np

from kvviz.record.trace import Protection, Trace

TOKENS = ["<s>", " Hello", " <script>", "\n", " world", "!", " A", " B", " C", " D"]
PROMPT_LEN = 6


def make_trace(**overrides) -> Trace:
    layers, heads, n = 2, 2, len(TOKENS)
    ev = np.full((layers, heads, n), -1, dtype=np.int32)
    ev[:, :, 2] = 0
    ev[:, :, 3] = 1
    ev[1, 1, 3] = 3  # one cell keeps position 3 longer
    scores = np.full((layers, heads, n), np.nan, dtype=np.float32)
    scores[:, :, :6] = [3.0, 2.0, 0.5, 0.7, 10.0, 1.0]
    steps = 4
    values = dict(
        model="synthetic",
        device="cpu",
        dtype="float32",
        policy="test",
        params={"test": {"n_sink": 1, "recent": 2, "budget": 5, "ratio": None}},
        prompt_ids=list(range(PROMPT_LEN)),
        generated_ids=[10, 11, 12, 13],
        tokens=list(TOKENS),
        n_layers=layers,
        n_kv_heads=heads,
        n_q_heads=4,
        head_dim=8,
        budget=5,
        layer_budgets=[5, 5],
        evicted_at_step=ev,
        scores=scores,
        kv_bytes=[100, 110, 120, 130],
        kv_bytes_full=[200, 220, 240, 260],
        bookkeeping_bytes=[10, 11, 12, 13],
        lost_mass=np.zeros((steps, layers), dtype=np.float32),
        topk_ids=np.zeros((steps, 2), dtype=np.int64),
        topk_probs=np.zeros((steps, 2), dtype=np.float32),
        entropy=np.zeros(steps, dtype=np.float32),
        chosen_logprob=np.zeros(steps, dtype=np.float32),
        timings={"prefill_s": 0.1, "decode_s": 0.3, "step_s": [0.1, 0.1, 0.1, 0.0], "total_s": 0.4},
        protection=Protection(n_sink=1, recent=2),
    )
    values.update(overrides)
    return Trace(**values)


def with_output(trace: Trace, generated_ids: list[int], tokens: list[str]) -> Trace:
    """A copy of ``trace`` whose generated part is replaced."""
    n = trace.prompt_len + len(generated_ids)
    return make_trace(
        generated_ids=generated_ids,
        tokens=trace.tokens[: trace.prompt_len] + tokens,
        evicted_at_step=trace.evicted_at_step[:, :, :n],
        scores=trace.scores[:, :, :n],
    )
