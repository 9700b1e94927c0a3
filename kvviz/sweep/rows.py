"""The rows of a sweep: plain numbers, their CSV and table forms. No torch here: charts, reports
and pages read rows through this module; ``kvviz.sweep.run`` produces them."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

PPL_COLUMNS = [
    "policy", "params", "ratio", "budget", "kv_bytes", "kv_bytes_peak", "kv_bytes_full", "kv_pct",
    "ppl", "kl_full", "top1_agree", "seconds",
]
PASSKEY_COLUMNS = [
    "policy", "params", "ratio", "budget", "depth", "length", "prompt_tokens", "found", "answer",
    "kv_bytes", "kv_bytes_full", "kv_pct", "seconds",
]


@dataclass
class SweepRow:
    """One point of a sweep, as plain numbers."""

    task: str  # "ppl" or "passkey"
    policy: str  # "snapkv", "h2o+kivi"
    params: str  # changed parameters in the text form, "" for the defaults
    ratio: float | None  # the ratio asked for (None with a budget, or for a policy without one)
    budget: int | None  # kept entries per layer and KV head it resolved to (None = no limit)
    kv_bytes: int  # K/V held at the last step
    kv_bytes_peak: int  # K/V held at the fullest step
    kv_bytes_full: int  # what the full cache holds at the last step
    seconds: float  # wall time of this run
    ppl: float = math.nan
    kl_full: float = math.nan  # mean KL(full || policy), nats
    top1_agree: float = math.nan  # share of steps whose top-1 token is the full cache's
    depth: float | None = None  # passkey
    length: int | None = None  # passkey: filler tokens
    prompt_tokens: int = 0
    found: bool | None = None
    answer: str = ""
    series: str = ""  # one line of a Pareto chart: the policy as the user wrote it, without the budget

    def __post_init__(self):
        if not self.series:
            self.series = self.policy + (f":{self.params}" if self.params else "")

    @property
    def kv_pct(self) -> float:
        """K/V held at the last step, in percent of the full cache."""
        return 100.0 * self.kv_bytes / self.kv_bytes_full if self.kv_bytes_full else math.nan

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"kv_pct": self.kv_pct}


def columns(task: str) -> list[str]:
    """The columns of a task's table and CSV."""
    return (PPL_COLUMNS if task == "ppl" else PASSKEY_COLUMNS) + ["series"]


def _dicts(rows: Sequence[SweepRow | Mapping]) -> list[Mapping]:
    return [r.to_dict() if isinstance(r, SweepRow) else r for r in rows]


def rows_csv(rows: Sequence[SweepRow | Mapping], task: str | None = None) -> str:
    """The rows as CSV text, with the task's columns (ppl or passkey) then ``series``."""
    dicts = _dicts(rows)
    task = task or (dicts[0]["task"] if dicts else "ppl")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns(task), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for d in dicts:
        writer.writerow({k: "" if d.get(k) is None else d[k] for k in columns(task)})
    return out.getvalue()


def rows_frame(rows: Sequence[SweepRow | Mapping], task: str):
    """The rows as a pandas DataFrame with the task's columns."""
    import pandas as pd

    return pd.DataFrame([{k: d.get(k) for k in columns(task)} for d in _dicts(rows)], columns=columns(task))
