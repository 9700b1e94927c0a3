"""Repeated token spans of a prompt, found left to right (plain Python, no torch).

A ``Repeat`` says that ``ids[start:start + length]`` equals ``ids[source:source + length]``, an
earlier occurrence that is itself no repeat (its KV is computed, so a copy is one hop away). At
each position the longest earlier match of at least ``min_len`` tokens wins, its first
occurrence is the source, and the search goes on after the repeat. Matches are found through the
positions of each ``min_len``-gram, so the cost is about the prompt's length times its repeats.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PROMPT = 8192


@dataclass(frozen=True)
class Repeat:
    source: int  # first position of the earlier occurrence
    start: int  # first position of this occurrence
    length: int  # tokens

    @property
    def shift(self) -> int:
        """Positions between the two occurrences: what the copied keys are re-rotated by."""
        return self.start - self.source

    def positions(self) -> range:
        return range(self.start, self.start + self.length)


def find_repeats(ids: list[int], min_len: int) -> list[Repeat]:
    """Each later occurrence of a span of at least ``min_len`` tokens, in order, not overlapping
    its source or another repeat."""
    if min_len < 1:
        raise ValueError(f"the minimum span length must be at least 1, got {min_len}")
    if len(ids) > MAX_PROMPT:
        raise ValueError(f"{len(ids):,} tokens: the repeat finder reads at most {MAX_PROMPT:,}")
    seen: dict[tuple[int, ...], list[int]] = {}  # min_len-gram -> positions where it starts, outside repeats
    out: list[Repeat] = []
    i = 0
    while i + min_len <= len(ids):
        best: Repeat | None = None
        for j in seen.get(tuple(ids[i:i + min_len]), []):
            n = min_len
            while i + n < len(ids) and j + n < i and ids[j + n] == ids[i + n] and not _in_repeat(out, j + n):
                n += 1
            clean = not any(_in_repeat(out, p) for p in range(j, j + min_len))
            if clean and j + min_len <= i and (best is None or n > best.length):
                best = Repeat(j, i, n)
        if best is not None:
            out.append(best)
            i += best.length
            continue
        seen.setdefault(tuple(ids[i:i + min_len]), []).append(i)
        i += 1
    return out


def _in_repeat(repeats: list[Repeat], pos: int) -> bool:
    return any(r.start <= pos < r.start + r.length for r in repeats)


def groups(ids: list[int], repeats: list[Repeat]) -> list[dict]:
    """Repeats by source: each span's tokens once, and where each occurrence starts."""
    by_source: dict[tuple[int, int], list[int]] = {}
    for r in repeats:
        by_source.setdefault((r.source, r.length), []).append(r.start)
    return [{"tokens": ids[s:s + n], "length": n, "occurrences": [s, *starts]} for (s, n), starts in by_source.items()]
