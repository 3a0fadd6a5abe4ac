"""`tinyllm-ray inspect`'s terminal view of :func:`tinyllm_ray.summary.summarize`: a table of the artifacts and one
of the teachers' rationales, as rich tables (``--json`` prints the summary itself)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

from tinyllm_ray.summary import QUALITY_COUNTS

TEACHER_PREFIX = "rationales/"
TEACHER_COLUMNS = ("rows", "errors", "mean_generated_tokens", *QUALITY_COUNTS)


def cell(key: str, value: Any) -> str:
    """One value as a person reads it: accuracies (from the evaluation) as percentages, missing as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and 0.0 <= value <= 1.0 and key not in TEACHER_COLUMNS:
        return f"{value:.1%}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def teacher_table(summary: Mapping[str, Mapping[str, Any]]) -> Table | None:
    """One column per teacher, one row per statistic: narrow enough for an 80-column terminal with a few teachers."""
    teachers = {name: info for name, info in summary.items() if name.startswith(TEACHER_PREFIX) or "rows" in info}
    if not teachers:
        return None
    table = Table(title="Teachers' rationales", title_justify="left")
    table.add_column("")
    for name in teachers:
        table.add_column(name.removeprefix(TEACHER_PREFIX), justify="right", overflow="fold")
    for key in ("model", "complete", *TEACHER_COLUMNS):
        table.add_row(key.replace("_", " "), *(cell(key, info.get(key)) for info in teachers.values()))
    return table


def artifact_table(summary: Mapping[str, Mapping[str, Any]]) -> Table | None:
    others = {name: info for name, info in summary.items()
              if not name.startswith(TEACHER_PREFIX) and "rows" not in info}
    if not others:
        return None
    table = Table(title="Artifacts", title_justify="left")
    for column in ("artifact", "complete", "details"):
        table.add_column(column)
    for name, info in others.items():
        details = "; ".join(f"{k} {cell(k, v)}" for k, v in info.items() if k != "complete")
        table.add_row(name, cell("complete", info.get("complete")), details or "-")
    return table


def summary_tables(summary: Mapping[str, Mapping[str, Any]]) -> list[Table]:
    return [t for t in (artifact_table(summary), teacher_table(summary)) if t is not None]


def findings(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What needs doing, a line each: today the damaged rationale files, which `generate` writes again."""
    return [f"{name}: damaged, {what}; rerun the job's `tinyllm-ray generate` (or `run`): it writes those shards "
            "again (a folder without _progress.json, written by hand, needs --force)"
            for name, info in summary.items() for what in info.get("damaged", [])]
