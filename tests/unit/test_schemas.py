"""Artifact schemas: conform, Parquet round trips and manifests."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinyllm_ray.schemas import (
    MANIFEST,
    PROBLEM_SCHEMA,
    RATIONALE_SCHEMA,
    ArtifactError,
    conform,
    read_footer,
    read_manifest,
    read_rows,
    read_table,
    training_schema,
    training_token_schema,
    write_manifest,
    write_table,
)

PROBLEMS = [
    {"id": "p1", "dataset": "demo", "split": "train", "question": "What melts ice?",
     "choices": ["heat", "cold"], "answer_index": 0, "answer": "heat", "context": None},
    {"id": "p2", "dataset": "demo", "split": "train", "question": "What do fish breathe with?",
     "choices": ["lungs", "gills"], "answer_index": 1, "answer": "gills", "context": "Water."},
]


def loose_problems(rows=PROBLEMS) -> pa.Table:
    """Same data, inferred types (int64, nullable) and a shuffled column order plus an extra column."""
    table = pa.Table.from_pylist([dict(reversed(list(r.items())), extra=1) for r in rows])
    assert table.column_names[0] == "context" and table.column_names[-1] == "extra"
    return table


# ---------------------------------------------------------------- conform

def test_conform_reorders_casts_and_drops_extra():
    table = loose_problems()
    assert table.schema.field("answer_index").type == pa.int64()
    out = conform(table, PROBLEM_SCHEMA, "here")
    assert out.schema == PROBLEM_SCHEMA
    assert out.column_names == PROBLEM_SCHEMA.names
    assert out.to_pylist() == PROBLEMS


def test_conform_names_missing_columns():
    table = pa.Table.from_pylist([{"id": "p1", "question": "q"}])
    with pytest.raises(ArtifactError) as info:
        conform(table, PROBLEM_SCHEMA, "problems.parquet")
    message = str(info.value)
    assert message.startswith("problems.parquet")
    for name in ("dataset", "split", "choices", "answer_index", "answer", "context"):
        assert repr(name) in message
    assert "missing columns" in message


def test_conform_uncastable_types():
    rows = [dict(PROBLEMS[0], answer_index="first")]
    with pytest.raises(ArtifactError, match="do not match"):
        conform(pa.Table.from_pylist(rows), PROBLEM_SCHEMA, "where")


def test_conform_allows_nulls_in_nullable_fields():
    out = conform(pa.Table.from_pylist(PROBLEMS), PROBLEM_SCHEMA, "where")
    assert out.column("context").null_count == 1


def test_conform_names_null_in_non_nullable_field():
    rows = [PROBLEMS[0], dict(PROBLEMS[1], answer=None)]
    with pytest.raises(ArtifactError, match="'answer'") as info:
        conform(pa.Table.from_pylist(rows), PROBLEM_SCHEMA, "problems.parquet")
    assert "problems.parquet" in str(info.value) and "null" in str(info.value)


def test_conform_rejects_null_in_non_nullable_field_somehow():
    """Whatever the exception class, a null in a non-nullable field must not pass."""
    rows = [PROBLEMS[0], dict(PROBLEMS[1], answer=None)]
    with pytest.raises(ValueError, match="answer"):
        conform(pa.Table.from_pylist(rows), PROBLEM_SCHEMA, "problems.parquet")


def test_training_schema():
    schema = training_schema(["a", "b"])
    assert schema.names == ["id", "input", "answer", "rationale__a", "rationale__b"]
    assert not schema.field("answer").nullable and schema.field("rationale__a").nullable


def test_training_token_schema():
    schema = training_token_schema(["answer", "rationale__a"])
    assert schema.names == ["id", "prompt_ids__answer", "target_ids__answer", "prompt_ids__rationale__a",
                            "target_ids__rationale__a"]
    assert schema.field("target_ids__answer").type == pa.list_(pa.int32())
    assert not schema.field("id").nullable and schema.field("prompt_ids__rationale__a").nullable


# ---------------------------------------------------------------- Parquet round trips

def test_write_read_file_round_trip(tmp_path):
    table = pa.Table.from_pylist(PROBLEMS, schema=PROBLEM_SCHEMA)
    path = tmp_path / "nested" / "problems.parquet"
    write_table(table, path)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["problems.parquet"]  # no temp file left
    back = read_table(path, PROBLEM_SCHEMA)
    assert back.schema == PROBLEM_SCHEMA and back.equals(table)


def test_write_table_overwrites(tmp_path):
    path = tmp_path / "p.parquet"
    write_table(pa.Table.from_pylist(PROBLEMS, schema=PROBLEM_SCHEMA), path)
    write_table(pa.Table.from_pylist(PROBLEMS[:1], schema=PROBLEM_SCHEMA), path)
    assert read_table(path, PROBLEM_SCHEMA).num_rows == 1


def test_read_directory_of_files(tmp_path):
    write_table(pa.Table.from_pylist(PROBLEMS[1:], schema=PROBLEM_SCHEMA), tmp_path / "part-1.parquet")
    write_table(pa.Table.from_pylist(PROBLEMS[:1], schema=PROBLEM_SCHEMA), tmp_path / "part-0.parquet")
    write_manifest(tmp_path, rows=2)  # non-parquet files are ignored
    back = read_table(tmp_path, PROBLEM_SCHEMA)
    assert back.schema == PROBLEM_SCHEMA
    assert back.to_pylist() == PROBLEMS  # files in sorted order


def test_read_directory_conforms_loose_files(tmp_path):
    pq.write_table(loose_problems(), tmp_path / "loose.parquet")
    back = read_table(tmp_path, PROBLEM_SCHEMA)
    assert back.schema == PROBLEM_SCHEMA and back.to_pylist() == PROBLEMS


def test_read_table_reads_only_the_named_columns(tmp_path):
    write_table(pa.Table.from_pylist(PROBLEMS, schema=PROBLEM_SCHEMA), tmp_path / "part-0.parquet")
    back = read_table(tmp_path, PROBLEM_SCHEMA, columns=["id", "answer_index"])
    assert back.column_names == ["id", "answer_index"] and back.schema.field("id").nullable is False
    assert back.to_pylist() == [{"id": p["id"], "answer_index": p["answer_index"]} for p in PROBLEMS]
    pq.write_table(pa.Table.from_pylist([{"id": "p1"}]), tmp_path / "part-1.parquet")
    with pytest.raises(ArtifactError, match=r"part-1.parquet: missing columns \['answer_index'\]"):
        read_table(tmp_path, PROBLEM_SCHEMA, columns=["id", "answer_index"])


def test_read_table_validates_and_names_file(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "p1"}]), path)
    with pytest.raises(ArtifactError, match="bad.parquet"):
        read_table(path, PROBLEM_SCHEMA)


def test_read_empty_directory(tmp_path):
    back = read_table(tmp_path, RATIONALE_SCHEMA)
    assert back.num_rows == 0 and back.schema == RATIONALE_SCHEMA


def test_read_table_missing_path(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        read_table(tmp_path / "absent.parquet", PROBLEM_SCHEMA)
    with pytest.raises(ArtifactError):
        read_table(tmp_path / "absent_dir", PROBLEM_SCHEMA)


# ---------------------------------------------------------------- manifests

def test_manifest_round_trip(tmp_path):
    assert read_manifest(tmp_path) is None
    written = write_manifest(tmp_path, fingerprint="abc123", counts={"rows": 2}, path=tmp_path)
    assert (tmp_path / MANIFEST).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]  # no temp file left
    back = read_manifest(tmp_path)
    assert back["fingerprint"] == "abc123" and back["counts"] == {"rows": 2}
    assert back["path"] == str(tmp_path)  # non-JSON values stored as strings
    assert isinstance(back["created_unix"], float) and isinstance(back["versions"], dict)
    assert "pyarrow" in back["versions"] and "host" in back
    assert back["fingerprint"] == written["fingerprint"]
    assert json.loads((tmp_path / MANIFEST).read_text()) == back


def test_manifest_overwrite_and_caller_fields_win(tmp_path):
    write_manifest(tmp_path, fingerprint="one")
    write_manifest(tmp_path, fingerprint="two", host="pinned")
    back = read_manifest(tmp_path)
    assert back["fingerprint"] == "two" and back["host"] == "pinned"


# ---------------------------------------------------------------- shard reads and footers

def test_read_rows_reads_only_the_requested_range(tmp_path):
    rows = [dict(PROBLEMS[i % 2], id=f"p{i}") for i in range(10)]
    path = tmp_path / "problems.parquet"
    write_table(pa.Table.from_pylist(rows, schema=PROBLEM_SCHEMA), path, row_group_size=3)
    assert pq.ParquetFile(path).num_row_groups == 4
    assert read_rows(path, 2, 5, PROBLEM_SCHEMA).column("id").to_pylist() == [f"p{i}" for i in range(2, 7)]
    assert read_rows(path, 9, 5, PROBLEM_SCHEMA).column("id").to_pylist() == ["p9"]
    assert read_rows(path, 10, 5, PROBLEM_SCHEMA).num_rows == 0
    assert read_rows(path, 0, 10, PROBLEM_SCHEMA).schema == PROBLEM_SCHEMA


def test_footer_round_trip_and_absent_footer(tmp_path):
    table = pa.Table.from_pylist(PROBLEMS, schema=PROBLEM_SCHEMA)
    write_table(table, tmp_path / "with.parquet", footer={"stats": {"rows": 2, "first_error": None}, "node": "n1"})
    write_table(table, tmp_path / "without.parquet")
    assert read_footer(tmp_path / "with.parquet") == {"stats": {"rows": 2, "first_error": None}, "node": "n1"}
    assert read_footer(tmp_path / "without.parquet") == {}
    assert read_table(tmp_path / "with.parquet", PROBLEM_SCHEMA).equals(table)  # the footer changes no data
