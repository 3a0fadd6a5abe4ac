"""Problem loading: every source yields the same validated table, and every bad row names its file and row."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from record_files import write

from tinyllm_ray.config import DataConfig
from tinyllm_ray.data import DataError, demo_corpus, load_problems, load_tinyllm_rationales
from tinyllm_ray.schemas import PROBLEM_SCHEMA

TINYLLM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyllm"
needs_tinyllm = pytest.mark.skipif(not TINYLLM.is_dir(), reason=f"TinyLLM data not present at {TINYLLM}")

RECORDS = [
    {"id": "q1", "question": "What melts ice?", "choices": ["heat", "cold", "dark"], "answer": "heat"},
    {"id": "q2", "question": "What do fish use to breathe?", "choices": ["lungs", "gills"], "answer": "gills"},
]


def test_demo_loads_conforms_and_is_balanced():
    train = load_problems(DataConfig(), "train")
    valid = load_problems(DataConfig(), "valid")
    assert train.schema == PROBLEM_SCHEMA and (train.num_rows, valid.num_rows) == (48, 16)
    assert train["id"][0].as_py() == "demo-train-001" and set(train["dataset"].to_pylist()) == {"demo"}
    for table, per_position in ((train, 12), (valid, 4)):
        positions = table["answer_index"].to_pylist()
        assert all(positions.count(i) == per_position for i in range(4))
        assert all(len(c) == 4 for c in table["choices"].to_pylist())
    assert not set(train["question"].to_pylist()) & set(valid["question"].to_pylist())
    with pytest.raises(DataError, match="splits"):
        load_problems(DataConfig(), "test")


def test_limits_apply_to_their_split_only():
    config = DataConfig(max_train_problems=5, max_eval_problems=3)
    assert load_problems(config, "train")["id"].to_pylist() == [f"demo-train-00{i}" for i in range(1, 6)]
    assert load_problems(config, "valid").num_rows == 3


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "csv"])
def test_large_files_stream_through_in_batches(tmp_path, fmt, monkeypatch):
    """Rows are validated and turned into Arrow a batch at a time; the table is the same as in one piece, and a
    bad row in a later batch still names its own row."""
    from tinyllm_ray import data

    records = [{**RECORDS[i % 2], "id": f"q{i}"} for i in range(7)]
    write(tmp_path / f"train.{fmt}", fmt, records)
    config = DataConfig(format=fmt, path=str(tmp_path / f"train.{fmt}"))
    whole = load_problems(config, "train")
    monkeypatch.setattr(data, "BUILD_BATCH", 3)
    batched = load_problems(config, "train")
    assert batched.equals(whole) and batched.num_rows == 7 and batched.column("id").num_chunks == 3
    write(tmp_path / f"train.{fmt}", fmt, records[:5] + [{**records[5], "answer": "fire"}] + records[6:])
    with pytest.raises(DataError, match=r"(row|line|record) 6\b.*'fire' is not among the choices"):
        load_problems(config, "train")


def test_rows_past_the_limit_are_not_read(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({**RECORDS[0], "id": f"q{i}"}) + "\n" for i in range(3)) + "{not json\n")
    config = DataConfig(format="jsonl", path=str(path), max_train_problems=3)
    assert load_problems(config, "train").column("id").to_pylist() == ["q0", "q1", "q2"]
    with pytest.raises(DataError, match="line 4: not valid JSON"):
        load_problems(DataConfig(format="jsonl", path=str(path)), "train")


def test_demo_corpus_has_data_and_template_words():
    lines = list(demo_corpus())
    assert "Which planet is closest to the Sun?" in lines and "Answer Choices:" in lines and "(e)" in lines


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "csv"])
def test_file_formats_round_trip(tmp_path, fmt):
    write(tmp_path / f"train.{fmt}", fmt, RECORDS)
    write(tmp_path / f"mydata_valid.{fmt}", fmt, RECORDS[:1])
    config = DataConfig(format=fmt, path=str(tmp_path), dataset="toy")
    table = load_problems(config, "train")
    assert table.schema == PROBLEM_SCHEMA
    assert table.select(["id", "question", "choices", "answer_index", "answer"]).to_pylist() == [
        {"id": "q1", "question": "What melts ice?", "choices": ["heat", "cold", "dark"], "answer_index": 0, "answer": "heat"},
        {"id": "q2", "question": "What do fish use to breathe?", "choices": ["lungs", "gills"], "answer_index": 1,
         "answer": "gills"},
    ]
    assert set(table["dataset"].to_pylist()) == {"toy"} and table["context"].null_count == 2
    assert load_problems(config, "valid").num_rows == 1  # *_{split}.{ext} also found
    single = DataConfig(format=fmt, path=str(tmp_path / f"train.{fmt}"))
    assert load_problems(single, "train")["dataset"][0].as_py() == "train"  # name from the file


def test_field_mapping_context_and_generated_ids(tmp_path):
    rows = [{"stem": "Which is a star?", "options": ["Sun", "Moon"], "gold": "Sun", "passage": "Look up."},
            {"stem": "Which is wet?", "options": ["sand", "water"], "gold": "water"}]
    write(tmp_path / "train.jsonl", "jsonl", rows)
    fields = {"id": None, "question": "stem", "choices": "options", "answer": "gold", "context": "passage"}
    table = load_problems(DataConfig(format="jsonl", path=str(tmp_path), dataset="sky", fields=fields), "train")
    assert table["id"].to_pylist() == ["sky-train-1", "sky-train-2"]
    assert table["context"].to_pylist() == ["Look up.", None]
    assert table["answer"].to_pylist() == ["Sun", "water"]


def test_answer_as_index_and_as_letter(tmp_path):
    write(tmp_path / "train.csv", "csv", [{"id": "a", "question": "q?", "choices": "x|y|z", "answer": "2"}])
    indexed = load_problems(DataConfig(format="csv", path=str(tmp_path), answer_is_index=True), "train")
    assert indexed.to_pylist()[0]["choices"] == ["x", "y", "z"] and indexed["answer"][0].as_py() == "z"
    rows = [{"id": "1", "question": "q?", "choices": ["x", "y", "z"], "answer": "(b)"},
            {"id": "2", "question": "q?", "choices": ["x", "y", "z"], "answer": "C"},
            {"id": "3", "question": "q?", "choices": ["a", "b", "c"], "answer": "b"}]  # option text wins over letter
    write(tmp_path / "train.jsonl", "jsonl", rows)
    assert load_problems(DataConfig(format="jsonl", path=str(tmp_path)), "train")["answer_index"].to_pylist() == [1, 2, 1]


def test_repeated_wrong_option_is_kept_with_warning(tmp_path):
    write(tmp_path / "train.jsonl", "jsonl", [{"id": "1", "question": "q?", "choices": ["x", "y", "y"], "answer": "x"}])
    with pytest.warns(UserWarning, match="line 1"):
        assert load_problems(DataConfig(format="jsonl", path=str(tmp_path)), "train").num_rows == 1


GOOD = {"id": "ok", "question": "Which is hot?", "choices": ["fire", "ice"], "answer": "fire"}
BAD = {
    "missing answer": ({"id": "x", "question": "q?", "choices": ["a", "b"]}, "answer"),
    "answer not among choices": ({**GOOD, "id": "x", "answer": "lava"}, "not among the choices"),
    "empty question": ({**GOOD, "id": "x", "question": "  "}, "question"),
    "empty choices": ({**GOOD, "id": "x", "choices": []}, "fewer than 2"),
    "empty choice text": ({**GOOD, "id": "x", "choices": ["fire", ""]}, "empty"),
    "answer repeated in choices": ({**GOOD, "id": "x", "choices": ["fire", "fire"]}, "more than once"),
    "duplicate id": (GOOD, "repeats line 1"),
    "bad json line": ('{"id": "x", "question": ', "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_malformed_rows_name_file_and_row(tmp_path, case):
    bad, expected = BAD[case]
    lines = [json.dumps(GOOD), json.dumps({**GOOD, "id": "ok2"}), bad if isinstance(bad, str) else json.dumps(bad)]
    (tmp_path / "broken_train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_problems(DataConfig(format="jsonl", path=str(tmp_path)), "train")
    assert "broken_train.jsonl" in str(err.value) and re.search(r"\bline 3\b", str(err.value))
    assert expected in str(err.value)


def test_answer_index_out_of_range(tmp_path):
    write(tmp_path / "train.json", "json", [{**GOOD, "answer": 1}, {**GOOD, "id": "x", "answer": 5}])
    with pytest.raises(DataError, match=r"train\.json, record 2: answer index 5 is out of range"):
        load_problems(DataConfig(format="json", path=str(tmp_path), answer_is_index=True), "train")


def test_missing_split_file_says_what_exists(tmp_path):
    write(tmp_path / "train.jsonl", "jsonl", RECORDS)
    with pytest.raises(DataError, match=r"valid\.jsonl.*train\.jsonl"):
        load_problems(DataConfig(format="jsonl", path=str(tmp_path)), "valid")


@needs_tinyllm
@pytest.mark.parametrize("name, rows", [("obqa", 4957), ("arc", 1117)])
def test_tinyllm_layout_jsonl_and_array(name, rows):
    config = DataConfig(format="tinyllm", path=str(TINYLLM / name))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = load_problems(config, "train")
    assert len(caught) == (1 if name == "obqa" else 0)  # obqa train repeats a wrong option in 3 rows
    assert table.schema == PROBLEM_SCHEMA and table.num_rows == rows
    assert set(table["dataset"].to_pylist()) == {name} and set(table["split"].to_pylist()) == {"train"}
    assert all(len(c) == 4 for c in table["choices"].to_pylist())


@needs_tinyllm
def test_tinyllm_rationales_align_with_problems():
    problems = load_problems(DataConfig(format="tinyllm", path=str(TINYLLM / "arc")), "train")
    rationales = load_tinyllm_rationales(TINYLLM / "arc", "train")
    assert set(rationales) == {"flan_t5_xl", "llama2_7b"}
    flan, llama = rationales["flan_t5_xl"], rationales["llama2_7b"]
    assert len(flan) == len(llama) == problems.num_rows
    assert sum(bool(t) for t in flan) > 0.95 * len(flan) and sum(bool(t) for t in llama) > 0.95 * len(llama)
    assert not any("\n\nQ:" in t for t in flan)  # echoed question cut off
    # teacher-forced FLAN rationales end with the gold option, which proves the row alignment
    assert all(t.endswith(a) for t, a in zip(flan, problems["answer"].to_pylist()))


def test_tinyllm_missing_rationale_files(tmp_path):
    write(tmp_path / "toy" / "toy_train.json", "json", RECORDS)
    with pytest.raises(DataError, match="train_CoT_0.json"):
        load_tinyllm_rationales(tmp_path / "toy", "train")

