"""The record of one run: what the model read and wrote, and what the cache kept at every step.

Steps: step 0 is the cache right after the prefill (and the policy's first compression); step
s > 0 is the cache after the s-th generated token entered it. The token generated at step s
comes from the logits of step s, so ``generated_ids[s]`` is chosen with the cache of step s and
enters the cache at step s + 1. A run of N generated tokens has N steps (0 .. N-1).

What each layer and KV head kept is stored compactly as ``evicted_at_step`` (layers, kv_heads,
positions): the step at which an entry left the cache, or -1 if it never did. An entry at
position p exists from the step it entered (0 for the prompt, p - prompt_len + 1 for generated
tokens) until it is evicted.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from kvviz.record.checks import TraceError  # noqa: F401  (what from_dict and load raise)

ARRAY_FIELDS = ("evicted_at_step", "scores", "lost_mass", "topk_ids", "topk_probs", "entropy", "kl_to_reference", "top1_agreement", "chosen_logprob", "read_mask", "recall")
ARRAY_DTYPES = {"evicted_at_step": np.int32, "topk_ids": np.int64, "top1_agreement": bool}  # others float32
UNSAVED_FIELDS = ("extra",)


@dataclass(frozen=True)
class Protection:
    """The entries a selector always keeps, as it declared them for a run's budget: the first
    ``n_sink`` tokens (attention sinks) and a window of the ``recent`` newest tokens. A selector
    that acts only at prefill (SnapKV) protects the window at the end of the prompt
    (``anchored_at_prompt``) rather than the newest tokens."""

    n_sink: int = 0
    recent: int = 0
    anchored_at_prompt: bool = False


@dataclass(frozen=True)
class StoreError:
    """How far a lossy store (quantization, low rank, head sharing) holds K/V from the originals.

    ``key``/``value``: per layer, the relative Frobenius error ‖x − x̂‖ / ‖x‖ over every key
    (value) appended. ``full_precision_keys``/``_values``: the newest tokens whose keys (values)
    are still held unquantized at the end of the run (a per-channel group that is filling, KIVI's
    residual window); None for a store that does not quantize (low rank, head sharing)."""

    key: list[float]
    value: list[float]
    full_precision_keys: int | None = None
    full_precision_values: int | None = None


@dataclass
class Trace:
    model: str
    device: str
    dtype: str
    policy: str  # e.g. "h2o" or "snapkv+quant"
    params: dict  # resolved parameters, per policy name
    prompt_ids: list[int]
    generated_ids: list[int]
    tokens: list[str]  # display string of every position: prompt then generated
    n_layers: int
    n_kv_heads: int
    n_q_heads: int
    head_dim: int
    budget: int | None  # kept entries per KV head (before per-layer adjustments), None = unlimited
    layer_budgets: list[int | None]
    evicted_at_step: np.ndarray  # (layers, kv_heads, positions) int32, -1 = never evicted
    scores: np.ndarray  # (layers, kv_heads, positions) float32, the last score that decided; NaN = never scored
    kv_bytes: list[int]  # per step: bytes of K/V tensors held (quantization scales and zero points included)
    kv_bytes_full: list[int]  # per step: what a full cache of the model's dtype would hold
    bookkeeping_bytes: list[int]  # per step: positions and policy statistics kvviz keeps beside the cache
    lost_mass: np.ndarray  # (steps, layers) attention mass the step's last query put on entries evicted at that step; NaN = not measured (run with capture_queries)
    topk_ids: np.ndarray  # (steps, k) int
    topk_probs: np.ndarray  # (steps, k) float32
    entropy: np.ndarray  # (steps,) float32, nats
    chosen_logprob: np.ndarray  # (steps,) float32, log-prob of the token that was fed next
    timings: dict  # prefill_s, decode_s, step_s (list), total_s
    kl_to_reference: np.ndarray | None = None  # (steps,) KL(reference || policy), nats
    top1_agreement: np.ndarray | None = None  # (steps,) bool
    teacher_forced: bool = False
    stopped_by: str = "max_new_tokens"  # "eos", "max_new_tokens", "user"
    store_error: StoreError | None = None  # a lossy store's reconstruction error; None without one
    protection: Protection = field(default_factory=Protection)  # what the selector always keeps
    spec: dict | None = None  # the PolicySpec that ran (PolicySpec.to_dict), None for a ready-made Pipeline
    # a model split across GPUs: per device, {"layers": [...], "weights_bytes", "kv_bytes", "allocated_bytes"}
    # at the end of the run; empty for a model on one device
    device_memory: dict = field(default_factory=dict)
    # retrieval (quest, sparq, simhash): per step, K/V bytes the attention read (every held entry
    # at the prefill) and bytes of the key summaries kept beside the cache; None for other policies
    read_bytes: list[int] | None = None
    summary_bytes: list[int] | None = None
    read_mask: np.ndarray | None = None  # (steps, layers, kv_heads, positions) bool: what each step's attention read (a retriever's choice; none at the prefill)
    recall: np.ndarray | None = None  # (steps, layers) share of the true top-k (by the step query's full attention, k = entries read) each read set held, mean over KV heads; NaN = not chosen/measured
    extra: dict = field(default_factory=dict)  # in-memory extras of a run (the log-probs tensor); not saved

    # ------------------------------------------------------------------ derived views

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_steps(self) -> int:
        return len(self.generated_ids)

    @property
    def all_ids(self) -> list[int]:
        return list(self.prompt_ids) + list(self.generated_ids)

    @property
    def n_positions(self) -> int:
        return self.evicted_at_step.shape[-1]

    def entered_at_step(self) -> np.ndarray:
        """(positions,) the step at which each position entered the cache."""
        pos = np.arange(self.n_positions)
        return np.where(pos < self.prompt_len, 0, pos - self.prompt_len + 1)

    def kept_mask(self, step: int, layer: int | None = None, head: int | None = None) -> np.ndarray:
        """Bool over positions: in the cache at ``step``. With layer/head None, the result is kept
        by every layer (resp. head) of the selection; use ``kept_share`` for fractions."""
        return np.asarray(self._present(step, layer, head).all(axis=0))

    def kept_share(self, step: int, layer: int | None = None, head: int | None = None) -> np.ndarray:
        """Float over positions: share of the selected layers and KV heads that hold the entry at ``step``."""
        return self._present(step, layer, head).mean(axis=0)

    def kept_positions(self, step: int, layer: int, head: int) -> np.ndarray:
        return np.flatnonzero(self.kept_mask(step, layer, head))

    def final_kept_positions(self) -> list[list[list[int]]]:
        """Per layer, per KV head: positions held at the last step."""
        last = max(self.n_steps - 1, 0)
        return [
            [self.kept_positions(last, l, h).tolist() for h in range(self.n_kv_heads)] for l in range(self.n_layers)
        ]

    def _present(self, step: int, layer: int | None, head: int | None) -> np.ndarray:
        """(selected layers x KV heads, positions) bool: held at ``step``."""
        ev = self.evicted_at_step
        ev = ev if layer is None else ev[layer : layer + 1]
        ev = ev if head is None else ev[:, head : head + 1]
        present = (self.entered_at_step() <= step) & ((ev == -1) | (ev > step))
        return present.reshape(-1, self.n_positions)

    @property
    def generated_text(self) -> str:
        return "".join(self.tokens[self.prompt_len :])

    # ------------------------------------------------------------------ save / load

    def to_dict(self) -> dict:
        """Plain lists, dicts and numbers (every field but ``extra``); NaN stays NaN (``save``
        writes it as null)."""
        out = {}
        for f in _saved_fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif dataclasses.is_dataclass(v) and not isinstance(v, type):
                v = dataclasses.asdict(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Trace":
        """Inverse of ``to_dict`` (numpy arrays or nested lists for the arrays), every field checked
        by the one strict reader, ``kvviz.record.trace_reader``; raises TraceError naming the field."""
        from kvviz.record.trace_reader import trace_from_dict  # that module builds Traces

        return trace_from_dict(d)

    def to_json(self) -> str:
        """Strict JSON (RFC 8259): NaN and infinities are written as null."""
        return json.dumps(_strict({f.name: getattr(self, f.name) for f in _saved_fields(self)}), allow_nan=False)

    def save(self, path: str | Path) -> Path:
        """Save as JSON (``.json``) or compressed numpy (``.npz``, the arrays beside strict JSON metadata)."""
        path = Path(path)
        if path.suffix == ".npz":
            arrays = {n: getattr(self, n) for n in ARRAY_FIELDS if getattr(self, n) is not None}
            meta = {k: v for k, v in self.to_dict().items() if k not in arrays}
            np.savez_compressed(path, meta=np.array(json.dumps(_strict(meta), allow_nan=False)), **arrays)
        else:
            path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        """A trace ``save`` wrote, read by the one strict reader (an npz's arrays are checked from
        their headers before they are read); raises TraceError (or OSError) with one line."""
        from kvviz.record.trace_reader import read_trace

        path = Path(path)
        return read_trace(path, path.name, max_bytes=None)


def _saved_fields(trace):
    return [f for f in fields(trace) if f.name not in UNSAVED_FIELDS]


def _strict(o):
    """``o`` with numpy values made plain and every non-finite float replaced by None."""
    if isinstance(o, dict):
        return {k: _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return _strict(dataclasses.asdict(o))
    if isinstance(o, np.ndarray):
        if o.dtype.kind == "f":
            finite = np.isfinite(o)
            o = o.astype(object)
            o[~finite] = None
        return o.tolist()
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def _json_default(o):
    """For ``json.dumps(default=...)`` of plain data holding numpy values (not for a Trace: use
    ``Trace.to_json``, which also writes NaN as null)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not serializable: {type(o)}")
