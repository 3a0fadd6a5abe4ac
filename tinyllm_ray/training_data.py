"""The multi-task training set: its tasks and the join of problems with teachers' rationales. Pure: pyarrow; no
Ray, no torch.

One training row per problem holds the student input, the gold answer and one rationale per distilled teacher
(null when that teacher's row failed or is filtered). A row is 1 + M sequences: ``task_prefix + input -> answer``
and ``rationale_prefix_m + input -> rationale_m``, tokenised by :mod:`tinyllm_ray.training_tokens`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tinyllm_ray import prompts, quality
from tinyllm_ray.schemas import rationale_column, training_schema


@dataclass(frozen=True)
class Task:
    name: str  # "answer" or the teacher name
    prefix: str
    column: str
    weight: float


def tasks_for(task_prefix: str, answer_weight: float, teachers: Sequence[tuple[str, str, float]]) -> list[Task]:
    """Task 0 is the answer; task m is teacher m (name, rationale prefix, alpha)."""
    return [Task("answer", task_prefix, "answer", answer_weight)] + [
        Task(name, prefix, rationale_column(name), alpha) for name, prefix, alpha in teachers
    ]


def task_pairs(batch: Mapping[str, Sequence[Any]], tasks: Sequence[Task]) -> list[list[tuple[int, str, str]]]:
    """Per training row of ``batch`` (training-schema columns), ``(task id, prompt, target)`` of every task it has a
    target for (not null, not blank), in task order: the sequences the student trains on, as text."""
    out = []
    for i, problem_input in enumerate(batch["input"]):
        pairs = []
        for task_id, task in enumerate(tasks):
            target = batch[task.column][i]
            if target is not None and str(target).strip():
                pairs.append((task_id, prompts.student_prompt(task.prefix, str(problem_input)), str(target)))
        out.append(pairs)
    return out


def take_fraction(problems: pa.Table, fraction: float, seed: int) -> pa.Table:
    """A seeded random ``fraction`` of the problems (at least one), in their original order. Smaller fractions are
    subsets of larger ones with the same seed, so a data-size sweep adds problems rather than swapping them."""
    import numpy as np

    if fraction >= 1.0:
        return problems
    keep = max(1, round(problems.num_rows * fraction))
    chosen = np.sort(np.random.default_rng(seed).permutation(problems.num_rows)[:keep])
    return problems.take(chosen)


def usable_rationale(row: Mapping[str, Any]) -> bool:
    return not row.get("error") and bool(str(row.get("rationale") or "").strip())


RATIONALE_COLUMNS = ("id", "rationale", "error", "finish_reason")  # what build_training_table reads of a teacher's rows
BUILD_BATCH = 8192  # problems held as Python rows at once while the training table is built
COUNT_KEYS = ("usable", "missing", "failed") + tuple(f"dropped_{reason}" for reason in quality.DROP_REASONS)


def build_training_table(problems: pa.Table, rationales: Mapping[str, pa.Table],
                         rationale_filter: Any = None) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """Join problems with each teacher's rationales by id; returns the table and per-teacher counts.

    A teacher's target for a problem is null when its row is missing, failed (``error``), blank, or, with a
    ``rationale_filter`` (``config.RationaleFilter``), dropped by it (:func:`quality.drop_reason`); the
    answer task always stays. Counts per teacher, over the problems, add up to the number of problems:
    ``usable``, ``missing``, ``failed`` and one ``dropped_<reason>`` per :data:`quality.DROP_REASONS`
    (a rationale with several flags counts once, under the first reason in that order).
    """
    counts = {name: dict.fromkeys(COUNT_KEYS, 0) for name in rationales}
    # Where each problem's row is in each teacher's table: Arrow lookups, so the driver holds Python rows for one
    # batch of problems at a time, not for every teacher's whole split.
    tables = {name: _one_row_per_id(table) for name, table in rationales.items()}
    positions = {name: pc.index_in(problems.column("id"), value_set=table.column("id"))
                 for name, table in tables.items()}
    schema = training_schema(list(rationales))
    parts = [schema.empty_table()]
    start = 0
    for batch in problems.to_batches(max_chunksize=BUILD_BATCH):  # Python objects for one batch of problems at a time
        rows_by_teacher = {name: _rows_at(tables[name], positions[name].slice(start, batch.num_rows))
                           for name in tables}
        start += batch.num_rows
        records = []
        for i, problem in enumerate(batch.to_pylist()):
            record = {"id": problem["id"], "input": prompts.student_input(problem), "answer": problem["answer"]}
            for name, rows in rows_by_teacher.items():
                outcome = _rationale_outcome(rows[i], problem, rationale_filter)
                counts[name][outcome] += 1
                record[rationale_column(name)] = rows[i]["rationale"].strip() if outcome == "usable" else None
            records.append(record)
        parts.append(pa.Table.from_pylist(records, schema=schema))
    return pa.concat_tables(parts), counts


def _one_row_per_id(table: pa.Table) -> pa.Table:
    """A teacher's rows with each id once. Written shards hold each id once; a repeated id (files edited or merged
    by hand) keeps its last usable row, or else its last row."""
    if pc.count_distinct(table.column("id")).as_py() == table.num_rows:
        return table
    best: dict[str, tuple[bool, int]] = {}
    for index, row in enumerate(table.to_pylist()):
        best[row["id"]] = max(best.get(row["id"], (False, -1)), (usable_rationale(row), index))
    return table.take(sorted(index for _, index in best.values()))


def _rows_at(table: pa.Table, positions: pa.Array) -> list[dict[str, Any] | None]:
    """The rows at ``positions`` (None where a position is null: the teacher has no row for that problem)."""
    rows = table.take(positions).to_pylist()
    return [row if position.is_valid else None for row, position in zip(rows, positions)]


def _rationale_outcome(row: Mapping[str, Any] | None, problem: Mapping[str, Any], rationale_filter: Any) -> str:
    """``usable``, ``missing``, ``failed`` or ``dropped_<reason>`` for one teacher row of one problem."""
    if row is None:
        return "missing"
    if row.get("error"):
        return "failed"
    if not usable_rationale(row):
        return "dropped_empty"  # never trainable, whatever the filter says
    if rationale_filter is None:
        return "usable"
    reason = quality.drop_reason(row["rationale"], row.get("finish_reason") or "", int(problem["answer_index"]),
                                 list(problem["choices"]), rationale_filter)
    return "usable" if reason is None else f"dropped_{reason}"


def micro_batches(batches: Iterable[Mapping[str, Sequence[Any]]], size: int) -> Iterator[dict[str, Sequence[Any]]]:
    """Split column batches (every one but the last a multiple of ``size`` rows long) into micro-batches of ``size``
    rows, in order, dropping a last partial one: what ``iter_batches(batch_size=size, drop_last=True)`` yields."""
    for batch in batches:
        rows = len(next(iter(batch.values()), ()))
        for start in range(0, rows - size + 1, size):
            yield {key: column[start:start + size] for key, column in batch.items()}
