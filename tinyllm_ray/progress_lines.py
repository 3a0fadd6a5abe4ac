"""Progress where there is no terminal (``ray job logs``, CI, a pipe): one line every ``interval`` seconds, so a long
stage shows it is alive and how far it got, without a line per step."""

from __future__ import annotations

import time
from typing import TextIO

from tinyllm_ray.progress import ProgressState, progress_text

DEFAULT_INTERVAL_S = 30.0


class LineProgress:
    """The first update prints at once; later ones only when ``interval`` seconds have passed since the last line.
    ``clock`` is injectable for tests."""

    def __init__(self, stream: TextIO, label: str, total: int, unit: str, interval: float = DEFAULT_INTERVAL_S,
                 clock=time.monotonic):
        self.stream, self.label, self.total, self.unit, self.interval = stream, label, total, unit, interval
        self.clock = clock
        self.start = clock()
        self.last_line: float | None = None

    def update(self, done: int, **facts: str) -> None:
        now = self.clock()
        if self.last_line is not None and now - self.last_line < self.interval:
            return
        self.last_line = now
        state = ProgressState(self.label, done, self.total, self.unit, now - self.start, facts)
        self.stream.write("  " + progress_text(state) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Nothing to clear: the stage's end line follows."""
