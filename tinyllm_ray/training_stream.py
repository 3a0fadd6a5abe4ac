"""The training set built and streamed by Ray Data, so the driver never holds a split (its memory stays flat as the
dataset grows; benchmarks/RESULTS.md).

:func:`build_training_set` runs two rounds of Ray Data tasks (the plan is :mod:`tinyllm_ray.training_stream_plan`):
scatter tasks read the frozen problems and every teacher's rationale files in pieces of whole row groups and write each
row into the bucket of its id's order key; join tasks each join one bucket's problems with its teachers' rows
(:func:`training_data.build_training_table`: the same outcomes, filter and counts as joining the whole split at once),
tokenise it with the student's tokenizer (:func:`training_tokens.tokenise_table`) and write that bucket of the
training set as token ids. The driver keeps the file list, the row count and the per-teacher counts.
:func:`training_dataset` streams those files in order to the Train workers, whose collator only pads and stacks.
Ray Data's own ``Dataset.join`` is not used: it needs polars (not a dependency) and a repeated id in hand-edited
rationale files would multiply rows, where the pure join keeps one row per id.

Why the join tasks tokenise, not a ``map_batches`` over the stream: each row is tokenised once per build, not once
per epoch, in tasks that already hold the bucket's rows, and no tokenising operator shares the CPUs with the
training workers while they train; the driver holds no more than before (file names and counts). A set's tokens
depend on :class:`training_tokens.Tokenisation` (the tokenizer's folder, the task prefixes, the truncation limits);
no set outlives the ``train`` call that built it (it is rebuilt from the inputs by every call, the same rows in the
same order, and deleted after the fit), so no set is ever read with other settings than it was built with. A worker
group that restarts mid-fit re-reads the same files; a re-run after the driver died resumes the Train run whose name
carries the student fingerprint, which covers the student model, its limits and the prefixes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from tinyllm_ray.layout import RunLayout
from tinyllm_ray.problems import require_frozen_problems
from tinyllm_ray.schemas import (PROBLEM_SCHEMA, REWRITE_HINT, ArtifactError, conform, rationale_column,
                                 read_manifest, training_token_schema, write_table)
from tinyllm_ray.training_stream_plan import (BUCKET_ROWS, KEY, PIECE_PROBLEM_SCHEMA, PIECE_RATIONALE_SCHEMA,
                                              POSITION, SCATTER_ROWS, ReadPiece, bucket_count, buckets_of,
                                              kept_positions, merge_counts, order_keys, piece_dir, read_plan,
                                              set_file, training_rows)
from tinyllm_ray.training_tokens import Tokenisation

SET_ROW_GROUP = 1024  # rows per row group of the built set: Ray Data reads a bucket file in several blocks


@dataclass(frozen=True)
class TrainingSet:
    """A built training set: its bucket files in training order, its rows, the per-teacher outcome counts, and the
    columns of its tasks (``training_token_schema``)."""

    files: tuple[str, ...]
    rows: int
    counts: dict[str, dict[str, int]]
    task_columns: tuple[str, ...]


def build_training_set(layout: RunLayout, teachers: Sequence[str], folder: Path, tokenisation: Tokenisation,
                       fraction: float = 1.0, seed: int = 0, rationale_filter: Any = None,
                       scatter_rows: int = SCATTER_ROWS, bucket_rows: int = BUCKET_ROWS) -> TrainingSet:
    """Join the frozen train split with ``teachers``' rationales and tokenise it by ``tokenisation`` (its tasks:
    the answer, then ``teachers`` in order) into Parquet files under ``folder`` (replaced), in Ray Data tasks;
    ``fraction`` and ``seed`` are ``training.data_fraction`` and ``training.seed``, the row counts the sizes of a
    scatter task's read and of a join bucket."""
    import ray

    if tokenisation.columns != ["answer"] + [rationale_column(name) for name in teachers]:
        raise ValueError(f"tokenisation tasks {tokenisation.columns} are not the answer and teachers {list(teachers)}")

    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    scratch = folder / "scratch"
    problem_files = _problem_files(layout)
    total = sum(sum(groups) for _, groups in problem_files)
    rows = training_rows(total, fraction)
    buckets = bucket_count(rows, bucket_rows)
    sources = [read_plan("problems", problem_files, scatter_rows)]
    sources += [read_plan(name, _rationale_files(layout, name), scatter_rows) for name in teachers]
    items = [{**piece.as_item(), "index": index} for index, pieces in enumerate(sources) for piece in pieces]
    if items:
        scatter = functools.partial(_scatter, scratch=str(scratch), buckets=buckets, problems=total,
                                    fraction=fraction, seed=seed)
        with _bad_artifacts_named():
            ray.data.from_items(items, override_num_blocks=len(items)).map(scatter).materialize()
    join = functools.partial(_join, scratch=str(scratch), folder=str(folder), teachers=list(teachers),
                             rationale_filter=rationale_filter, tokenisation=tokenisation)
    summary = ray.data.from_items([{"bucket": b} for b in range(buckets)], override_num_blocks=buckets).map(join)
    with _bad_artifacts_named():
        done = sorted(summary.take_all(), key=lambda row: row["bucket"])
    shutil.rmtree(scratch, ignore_errors=True)
    built = sum(int(row["rows"]) for row in done)
    if built != rows:  # every kept problem is one row: anything else is a bug, not bad data
        raise RuntimeError(f"training set under {folder} has {built} rows, expected {rows}")
    return TrainingSet(files=tuple(str(set_file(folder, int(row["bucket"]))) for row in done if row["rows"]),
                       rows=built, counts=merge_counts((json.loads(row["counts"]) for row in done), teachers),
                       task_columns=tuple(tokenisation.columns))


def training_dataset(training_set: TrainingSet):
    """The built set as a Ray Data stream of token rows, in training order (ingested with ``preserve_order``)."""
    import ray

    schema = training_token_schema(list(training_set.task_columns))
    if not training_set.files:
        return ray.data.from_arrow(schema.empty_table())
    return ray.data.read_parquet(list(training_set.files), schema=schema, shuffle=None)


@contextlib.contextmanager
def _bad_artifacts_named():
    """A task's ArtifactError (a null where the schema forbids one) raised in the driver as itself: Ray Data wraps a
    failed task in its own exceptions, which the CLI would show as a traceback."""
    try:
        yield
    except Exception as err:
        cause = _artifact_cause(err)
        if cause is None:
            raise
        raise ArtifactError(cause) from None


def _artifact_cause(err: BaseException) -> str | None:
    """The message of the ArtifactError a task raised. Ray Data's UserCodeException keeps no cause once it crossed
    processes, only the task's traceback text, whose line ``...ArtifactError: <message>`` carries it."""
    import re

    found = re.search(r"(?m)^\S*ArtifactError: (.+)$", str(err))
    return found.group(1).strip() if found else None


# ---------------------------------------------------------------- what the driver reads: file footers only

def require_rationales(layout: RunLayout, teacher: str) -> Path:
    """A teacher's rationale folder, complete (its manifest exists), or an error that says what to run."""
    directory = layout.teacher_dir(teacher)
    if read_manifest(directory) is None:
        raise ArtifactError(f"rationales for teacher {teacher!r} are missing or incomplete at {directory}: "
                            "run `tinyllm-ray generate` first")
    return directory


def require_inputs(layout: RunLayout, teachers: Sequence[str]) -> None:
    """What a training set is built from is complete: the frozen problems and every named teacher's rationales."""
    require_frozen_problems(layout)
    for teacher in teachers:
        require_rationales(layout, teacher)


def _problem_files(layout: RunLayout) -> list[tuple[str, list[int]]]:
    require_frozen_problems(layout)
    path = layout.problem_file("train")
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    return [_row_groups(path, PROBLEM_SCHEMA)]


def _rationale_files(layout: RunLayout, teacher: str) -> list[tuple[str, list[int]]]:
    directory = require_rationales(layout, teacher)
    schema = _narrow(PIECE_RATIONALE_SCHEMA)
    return [_row_groups(path, schema) for path in sorted(directory.glob("*.parquet"))]


def _row_groups(path: Path, schema: pa.Schema) -> tuple[str, list[int]]:
    """A file's row groups' row counts, its columns checked against ``schema`` (types and presence; nulls are checked
    where the rows are read)."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_metadata(path)
        present = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ArtifactError(f"{path}: not a readable Parquet file ({err}); {REWRITE_HINT}") from err
    columns = [name for name in schema.names if name in present.names]
    try:
        conform(present.empty_table().select(columns), schema, str(path))
    except ArtifactError as err:
        raise ArtifactError(f"{err}; {REWRITE_HINT}") from None
    return str(path), [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


def _narrow(schema: pa.Schema) -> pa.Schema:
    """``schema`` without the columns the scatter adds."""
    return pa.schema([field for field in schema if field.name not in (KEY, POSITION)])


# ---------------------------------------------------------------- Ray Data tasks

def _read(piece: ReadPiece, schema: pa.Schema) -> pa.Table:
    import pyarrow.parquet as pq

    tables = [schema.empty_table()]
    for path, groups in piece.parts:
        table = pq.ParquetFile(path).read_row_groups(list(groups), columns=schema.names)
        try:
            tables.append(conform(table, schema, path))
        except ArtifactError as err:
            raise ArtifactError(f"{err}; {REWRITE_HINT}") from None
    return pa.concat_tables(tables)


def _scatter(item: Mapping[str, Any], scratch: str, buckets: int, problems: int, fraction: float,
             seed: int) -> dict[str, Any]:
    """One piece of a source written into the buckets of its rows' ids (one file per bucket it reaches)."""
    import numpy as np
    import pyarrow.parquet as pq

    piece, index = ReadPiece.from_item(item), int(item["index"])
    if index == 0:
        table = _read(piece, PROBLEM_SCHEMA)
        table = table.take(kept_positions(problems, fraction, seed, piece.start, piece.rows))
        keys = order_keys(table.column("id").to_pylist(), seed)
        table = table.append_column(KEY, pa.array(keys, pa.uint64()))
    else:
        schema = _narrow(PIECE_RATIONALE_SCHEMA)
        table = _read(piece, schema)
        table = table.append_column(POSITION, pa.array(np.arange(piece.start, piece.start + table.num_rows),
                                                       pa.int64()))
        keys = order_keys(table.column("id").to_pylist(), seed)
    bucket = np.asarray(buckets_of(keys, buckets), dtype=np.int64)
    for b in np.unique(bucket):
        out = piece_dir(Path(scratch), index, int(b)) / f"piece-{piece.start:012d}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(np.flatnonzero(bucket == b)), out)
    return {"index": index, "start": piece.start, "rows": table.num_rows}


def _join(item: Mapping[str, Any], scratch: str, folder: str, teachers: list[str], rationale_filter: Any,
          tokenisation: Tokenisation) -> dict[str, Any]:
    """One bucket of the training set: its problems in key order joined with each teacher's rows of the bucket in
    file order (so a repeated id keeps the row the whole-split join would), tokenised."""
    import pyarrow.compute as pc

    from tinyllm_ray.training_data import build_training_table
    from tinyllm_ray.training_tokens import tokenise_table

    bucket = int(item["bucket"])
    problems = _pieces(piece_dir(Path(scratch), 0, bucket), PIECE_PROBLEM_SCHEMA)
    if problems.num_rows == 0:
        return {"bucket": bucket, "rows": 0, "counts": json.dumps({})}
    problems = problems.take(pc.sort_indices(problems, [(KEY, "ascending"), ("id", "ascending")])).drop_columns([KEY])
    rationales = {}
    for index, name in enumerate(teachers, start=1):
        rows = _pieces(piece_dir(Path(scratch), index, bucket), PIECE_RATIONALE_SCHEMA)
        rationales[name] = rows.take(pc.sort_indices(rows, [(POSITION, "ascending")])).drop_columns([POSITION])
    table, counts = build_training_table(problems, rationales, rationale_filter)
    table = tokenise_table(table, _tokenizer(tokenisation.model_path), tokenisation)
    write_table(table, set_file(Path(folder), bucket), row_group_size=SET_ROW_GROUP)
    return {"bucket": bucket, "rows": table.num_rows, "counts": json.dumps(counts)}


def _pieces(directory: Path, schema: pa.Schema) -> pa.Table:
    import pyarrow.parquet as pq

    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    return pa.concat_tables([schema.empty_table()] + [pq.read_table(f).cast(schema) for f in files])


@functools.lru_cache(maxsize=2)
def _tokenizer(model_path: str):
    """The student's tokenizer, loaded once per worker process (Ray Data reuses them across join tasks)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)
