"""Numbers derived from runs, in plain Python and numpy: what charts, pages and the CLI show.

Nothing here imports torch; charts build on this module, the Trace and ``token_states``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kvviz.i18n import N_, _


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units; whole bytes below 1 KiB)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def byte_unit(max_bytes: float) -> tuple[float, str]:
    """The binary unit to plot bytes in, for values up to ``max_bytes``: (scale, name)."""
    for scale, name in ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if max_bytes >= scale:
            return scale, name
    return 1, "bytes"


@dataclass(frozen=True)
class MemorySaving:
    step: int
    kv_bytes: int  # K/V tensors the policy holds (quantization scales and zero points included)
    kv_bytes_full: int  # what the full cache would hold at this step
    bookkeeping_bytes: int  # positions and policy statistics kept beside the cache

    @property
    def saved_bytes(self) -> int:
        return self.kv_bytes_full - self.kv_bytes

    @property
    def saved_pct(self) -> float:
        return 100.0 * self.saved_bytes / self.kv_bytes_full if self.kv_bytes_full else 0.0

    @property
    def held_pct(self) -> float:
        """K/V held as a percentage of the full cache."""
        return 100.0 * self.kv_bytes / self.kv_bytes_full if self.kv_bytes_full else 0.0


def memory_saving(trace, step: int | None = None) -> MemorySaving:
    """Bytes a Trace held against the full cache at ``step`` (default and beyond the end: the last step)."""
    if not trace.kv_bytes:
        return MemorySaving(0, 0, 0, 0)
    last = len(trace.kv_bytes) - 1
    s = last if step is None else min(max(int(step), 0), last)
    return MemorySaving(s, int(trace.kv_bytes[s]), int(trace.kv_bytes_full[s]), int(trace.bookkeeping_bytes[s]))


def first_divergence(reference: Sequence[int], other: Sequence[int]) -> int | None:
    """Index (0 = the first generated token) of the first token where ``other`` differs from
    ``reference``; when one is a prefix of the other, the length of the shorter; None when equal."""
    for i, (x, y) in enumerate(zip(reference, other)):
        if x != y:
            return i
    return None if len(reference) == len(other) else min(len(reference), len(other))


def perplexity(chosen_logprobs) -> float:
    """exp of the mean negative log-likelihood of the forced tokens (natural log); NaN for none."""
    lp = np.asarray(chosen_logprobs, dtype=np.float64)
    return float(np.exp(-lp.mean())) if lp.size else float("nan")


def mean_or_nan(values) -> float:
    """The mean of ``values`` as a float, NaN when there are none (never a warning)."""
    a = np.asarray(values if values is not None else [], dtype=np.float64)
    return float(a.mean()) if a.size else float("nan")


def index_ranges(indices: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5" (sorted, distinct indices)."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive indices
    for i in sorted(set(indices)):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def device_memory_rows(memory: dict[str, dict]) -> list[tuple[str, str]]:
    """One (label, text) row per device of a model split across GPUs, from a Trace's
    ``device_memory`` (or a model summary's): the decoder layers it holds, the bytes of weights,
    of K/V cache and what torch had allocated there, for the entries present."""
    rows = []
    for device, m in memory.items():
        layers = m.get("layers") or []
        parts = [_("layers {layers}").format(layers=index_ranges(layers)) if layers else _("no decoder layer")]
        for key, label in (("weights_bytes", N_("weights {size}")), ("kv_bytes", N_("KV cache {size}")),
                           ("allocated_bytes", N_("allocated by torch {size}"))):
            if m.get(key) is not None:
                parts.append(_(label).format(size=format_bytes(m[key])))
        rows.append((_("On {device}").format(device=device), " · ".join(parts)))
    return rows
