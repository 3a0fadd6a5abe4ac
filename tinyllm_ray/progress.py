"""What a stage's live progress shows, as text, and the seam where displays vary. Pure: no terminal, no Ray.

A stage asks the console (:mod:`tinyllm_ray.console`) for a :class:`ProgressDisplay` and feeds it counts. Two kinds:
``progress_live`` redraws one line in a terminal; ``progress_lines`` prints a line every so often where there is
no terminal (``ray job logs``, CI, a file), so a long stage shows it is alive without a line per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class ProgressDisplay(Protocol):
    """One stage's progress: ``update`` with the count done so far and a few facts (named for the producer, shown
    by their text: ``loss="loss 1.29"``), ``close`` when it ends."""

    def update(self, done: int, **facts: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ProgressState:
    """A snapshot: ``done`` of ``total`` ``unit`` after ``elapsed`` seconds, with facts such as a loss or a rate."""

    label: str
    done: int
    total: int
    unit: str
    elapsed: float
    facts: Mapping[str, str] = field(default_factory=dict)


def format_duration(seconds: float) -> str:
    """``45s``, ``3m10s``, ``2h05m``: short enough for an 80-column line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_seconds(done: int, total: int, elapsed: float) -> float | None:
    """Seconds left at the rate so far; None before the first unit is done (no rate yet) or without a total."""
    if done <= 0 or total <= 0 or elapsed <= 0:
        return None
    return max(total - done, 0) * elapsed / done


def progress_text(state: ProgressState) -> str:
    """``train  step 12/139 (9%)  loss 1.29  95 tok/s  3m10s, ETA 20m05s``: one line, no bar."""
    count = f"{state.unit} {state.done}/{state.total}" if state.unit else f"{state.done}/{state.total}"
    if state.total > 0:
        count += f" ({math.floor(100 * min(state.done, state.total) / state.total)}%)"
    facts = "  ".join(value for value in state.facts.values() if value)
    eta = eta_seconds(state.done, state.total, state.elapsed)
    timing = format_duration(state.elapsed) + (f", ETA {format_duration(eta)}" if eta is not None else "")
    return "  ".join(part for part in (state.label, count, facts, timing) if part)


def rate_text(amount: float, seconds: float, unit: str) -> str:
    """``95 tok/s`` (one decimal below 10): a throughput fact for a display."""
    rate = amount / seconds if seconds > 0 else 0.0
    return f"{rate:.1f} {unit}/s" if rate < 10 else f"{rate:.0f} {unit}/s"
