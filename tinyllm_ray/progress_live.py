"""Progress in a terminal: one line redrawn in place (rich), a bar with the count, the stage's facts and the ETA.
It is removed when the stage ends, so the stage's end line takes its place and the scrollback stays short."""

from __future__ import annotations

import time
from typing import TextIO

from tinyllm_ray.progress import eta_seconds, format_duration


class LiveProgress:
    """A transient rich progress line on ``stream`` (which must be a terminal); at most ~4 redraws a second."""

    def __init__(self, stream: TextIO, label: str, total: int, unit: str):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.total, self.unit = total, unit
        self.start = time.monotonic()
        # the elapsed time ticks between updates (a teacher's first shard can take minutes), the rest moves with them
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=12), TimeElapsedColumn(),
                                 TextColumn("{task.fields[text]}"),
                                 console=Console(file=stream), transient=True, refresh_per_second=4,
                                 # rich would print the process's other output above the line: it belongs in the log
                                 redirect_stdout=False, redirect_stderr=False)
        self.task = self.progress.add_task(label, total=max(total, 1), text=self._text(0, {}))
        self.progress.start()

    def _text(self, done: int, facts: dict[str, str]) -> str:
        count = f"{done}/{self.total} {self.unit}".strip()
        eta = eta_seconds(done, self.total, time.monotonic() - self.start)
        parts = [count, *(value for value in facts.values() if value),
                 f"ETA {format_duration(eta)}" if eta is not None else ""]
        return "  ".join(part for part in parts if part)

    def update(self, done: int, **facts: str) -> None:
        self.progress.update(self.task, completed=done, text=self._text(done, facts))

    def close(self) -> None:
        self.progress.stop()
