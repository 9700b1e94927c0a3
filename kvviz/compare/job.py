"""A comparison on a background thread, for the Compare page: progress run by run, and Stop, which
keeps the policies that finished. Nothing here imports streamlit."""

from __future__ import annotations

from kvviz.compare.result import ComparisonResult
from kvviz.compare.run import Progress, compare
from kvviz.runs.bundle import RunSettings
from kvviz.runtime.jobs import BackgroundJob

NOTHING_TO_COMPARE = "Stopped before a policy finished: nothing to compare."


class CompareJob(BackgroundJob):
    """Runs ``compare``; ``stop()`` ends the current run at its next token and skips the rest."""

    thread_name = "kvviz-compare"

    def __init__(self, model, tokenizer, prompt_ids: list[int], settings: RunSettings, model_name: str = ""):
        super().__init__()
        self.model, self.tokenizer, self.prompt_ids, self.settings = model, tokenizer, prompt_ids, settings
        self.model_name = model_name
        self.latest: Progress | None = None
        self.result: ComparisonResult | None = None

    def work(self) -> None:
        self.result = compare(
            self.model, self.tokenizer, self.prompt_ids, self.settings, model_name=self.model_name,
            on_progress=self._on_progress, should_stop=self.should_stop,
        )
        if self.result is None or not self.result.runs:
            self.result, self.notice = None, NOTHING_TO_COMPARE

    def size(self) -> tuple[int, int, int]:
        return len(self.prompt_ids), self.settings.max_new_tokens, 1

    def running_progress(self) -> tuple[float, str]:
        p = self.latest
        return (0.0, "Starting") if p is None else (p.fraction, p.line())

    def _on_progress(self, progress: Progress) -> None:
        self.latest = progress
