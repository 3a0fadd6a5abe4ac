"""Imported teachers: rationales read from the TinyLLM layout and from files of rows, validated against the
problems with the file and row named for every bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinyllm_ray.config import DataConfig, ImportSource
from tinyllm_ray.data import DataError, load_problems
from tinyllm_ray.quality import cut_after_answer
from tinyllm_ray.rationale_import import read_imported

TINYLLM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyllm"
needs_tinyllm = pytest.mark.skipif(not TINYLLM.is_dir(), reason=f"TinyLLM data not present at {TINYLLM}")
IDS = ["q1", "q2", "q3"]
ROWS = [{"id": "q1", "why": "Heat melts ice. Thus, the answer is (a) heat"},
        {"id": "q3", "why": "Fish have gills. Thus, the answer is (b) gills\n\nQ: What do birds eat?\n(a) seeds"}]


def write(path: Path, fmt: str, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def source(path: Path, fmt: str, **kwargs) -> ImportSource:
    return ImportSource(format=fmt, path=str(path), rationale_field="why", **kwargs)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
def test_files_of_rows_import_with_counts(tmp_path: Path, fmt: str):
    imported = read_imported(source(write(tmp_path / f"r.{fmt}", fmt, ROWS), fmt), IDS)
    assert imported.table.column("id").to_pylist() == ["q1", "q3"]
    assert imported.table.column("rationale").to_pylist() == ["Heat melts ice. Thus, the answer is (a) heat",
                                                              "Fish have gills. Thus, the answer is (b) gills"]
    assert (imported.missing, imported.cut, imported.outside) == (1, 1, 0)


def test_the_cut_is_optional(tmp_path: Path):
    imported = read_imported(source(write(tmp_path / "r.jsonl", "jsonl", ROWS), "jsonl", cut_after_answer=False), IDS)
    assert imported.cut == 0 and "What do birds eat?" in imported.table.column("rationale")[1].as_py()


def test_cut_rule():
    assert cut_after_answer("A. Thus, the answer is (c) salt water\n\nQ: next?") == ("A. Thus, the answer is (c) salt water", True)
    assert cut_after_answer("No statement here.\n\nQ: next?") == ("No statement here.\n\nQ: next?", False)
    assert cut_after_answer("So the answer is (B) two.  \n") == ("So the answer is (B) two.", False)


@pytest.mark.parametrize("rows, match", [
    ([{"id": "q9", "why": "x"}], r"r\.jsonl, line 1: id 'q9' is not among the 3 train problems"),
    ([{"id": "q1", "why": "x"}, {"id": "q1", "why": "y"}], r"r\.jsonl, line 2: duplicate id 'q1' \(first at .*line 1\)"),
    ([{"id": "q1", "text": "x"}], r"r\.jsonl, line 1: field 'why' is missing .*source\.rationale_field"),
    ([{"why": "x"}], r"line 1: field 'id' is missing .*source\.id_field"),
    ([{"id": "q1", "why": 3}], r"line 1: the rationale must be a string"),
])
def test_bad_rows_name_file_and_row(tmp_path: Path, rows, match):
    with pytest.raises(DataError, match=match):
        read_imported(source(write(tmp_path / "r.jsonl", "jsonl", rows), "jsonl"), IDS)


def test_unreadable_and_missing_files(tmp_path: Path):
    (tmp_path / "r.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_imported(source(tmp_path / "r.parquet", "parquet"), IDS)
    (tmp_path / "r.jsonl").write_text('{"id": "q1", "why": "x"}\n{oops\n')
    with pytest.raises(DataError, match=r"r\.jsonl, line 2: not valid JSON"):
        read_imported(source(tmp_path / "r.jsonl", "jsonl"), IDS)
    with pytest.raises(DataError, match="does not exist"):
        read_imported(source(tmp_path / "nope.jsonl", "jsonl"), IDS)


def test_a_subset_of_problems_skips_and_counts_other_ids(tmp_path: Path):
    imported = read_imported(source(write(tmp_path / "r.jsonl", "jsonl", ROWS), "jsonl"), ["q1"], subset=True)
    assert imported.table.num_rows == 1 and imported.outside == 1 and imported.missing == 0


@needs_tinyllm
@pytest.mark.parametrize("teacher, rows, missing, cut", [("flan_t5_xl", 1117, 0, 1117), ("llama2_7b", 1113, 4, 0)])
def test_paper_rationales_import_from_the_tinyllm_layout(teacher, rows, missing, cut):
    problems = load_problems(DataConfig(format="tinyllm", path=str(TINYLLM / "arc")), "train")
    spec = ImportSource(format="tinyllm", path=str(TINYLLM / "arc"), teacher=teacher,
                        cut_after_answer=teacher == "flan_t5_xl")
    imported = read_imported(spec, problems.column("id").to_pylist())
    assert (imported.table.num_rows, imported.missing, imported.cut) == (rows, missing, cut)
    if teacher == "flan_t5_xl":  # teacher-forced: each ends with the gold option, which proves the row alignment
        answers = dict(zip(problems.column("id").to_pylist(), problems.column("answer").to_pylist()))
        assert all(text.endswith(answers[i]) for i, text in zip(imported.table.column("id").to_pylist(),
                                                                imported.table.column("rationale").to_pylist()))


def test_tinyllm_source_needs_its_teacher():
    with pytest.raises(ValueError, match="source.teacher"):
        ImportSource(format="tinyllm", path="x")
    with pytest.raises(ValueError, match="source.teacher"):
        ImportSource(format="jsonl", path="x", teacher="flan_t5_xl")
