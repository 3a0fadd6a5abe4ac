"""Field mapping for the shapes real datasets have: nested records (Hugging Face ARC / OpenBookQA), one column per
option (CSV files), answers given as labels; the same rows and the same errors in every file format."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from record_files import write

from tinyllm_ray.config import ConfigError, DataConfig, FieldMapping, load_config
from tinyllm_ray.data import DataError, load_problems
from tinyllm_ray.data_fields import lookup, where_missing

# ARC's original JSON Lines: the options sit inside the question; one row has numeric labels, as real ARC rows do.
ARC = [
    {"id": "Mercury_1", "question": {"stem": "Which is a source of light?",
                                     "choices": {"text": ["a rock", "the Sun", "a mirror"], "label": ["A", "B", "C"]}},
     "answerKey": "B"},
    {"id": "Mercury_2", "question": {"stem": "What do plants need to grow?",
                                     "choices": {"text": ["water", "sand", "plastic", "glass"],
                                                 "label": ["1", "2", "3", "4"]}},
     "answerKey": "1"},
]
ARC_FIELDS = {"question": "question.stem", "choices": "question.choices.text", "labels": "question.choices.label",
              "answer": "answerKey"}
# OpenBookQA as the Hugging Face hub serves it: question_stem beside a choices record.
OBQA = [
    {"id": "7-980", "question_stem": "The sun is responsible for",
     "choices": {"text": ["puppies learning new tricks", "plants sprouting"], "label": ["A", "B"]}, "answerKey": "B"},
    {"id": "7-584", "question_stem": "When standing miles away a mountain looks",
     "choices": {"text": ["tiny", "large", "flat"], "label": ["A", "B", "C"]}, "answerKey": "A"},
]
OBQA_FIELDS = {"question": "question_stem", "choices": "choices.text", "labels": "choices.label", "answer": "answerKey"}
# One column per option with an answer letter; the second row has only three options (D left empty).
LETTERS = [
    {"id": "c1", "question": "What melts ice?", "A": "heat", "B": "cold", "C": "dark", "D": "wind", "answer": "A"},
    {"id": "c2", "question": "What do fish use to breathe?", "A": "lungs", "B": "gills", "C": "skin", "D": "",
     "answer": "B"},
]
LETTER_FIELDS = {"choices": ["A", "B", "C", "D"]}
EXPECTED = {
    "arc": (["Which is a source of light?", "What do plants need to grow?"],
            [["a rock", "the Sun", "a mirror"], ["water", "sand", "plastic", "glass"]], [1, 0]),
    "obqa": (["The sun is responsible for", "When standing miles away a mountain looks"],
             [["puppies learning new tricks", "plants sprouting"], ["tiny", "large", "flat"]], [1, 0]),
    "letters": (["What melts ice?", "What do fish use to breathe?"],
                [["heat", "cold", "dark", "wind"], ["lungs", "gills", "skin"]], [0, 1]),
}
# ARC's original JSON Lines (before the hub's conversion): the options are a list of records.
ARC_ORIGINAL = [{**r, "question": {"stem": r["question"]["stem"],
                                   "choices": [{"text": t, "label": la} for t, la in zip(r["question"]["choices"]["text"],
                                                                                        r["question"]["choices"]["label"])]}}
                for r in ARC]
EXPECTED["arc_original"] = EXPECTED["arc"]
SHAPES = {"arc": (ARC, ARC_FIELDS), "arc_original": (ARC_ORIGINAL, ARC_FIELDS), "obqa": (OBQA, OBQA_FIELDS),
          "letters": (LETTERS, LETTER_FIELDS)}


def load(tmp_path: Path, fmt: str, records: list[dict], fields: dict, split: str = "train"):
    write(tmp_path / f"{split}.{fmt}", fmt, records)
    return load_problems(DataConfig(format=fmt, path=str(tmp_path), dataset="t", fields=fields), split)


def test_lookup_follows_dots_and_prefers_a_dotted_column_name():
    record = {"question": {"stem": "nested"}, "a.b": "flat", "a": {"b": "deep"}}
    assert lookup(record, "question.stem") == "nested"
    assert lookup(record, "a.b") == "flat"  # a CSV header spelled with the dot is the column
    assert lookup(record, "question.text") is None and lookup(record, "question.stem.x") is None
    assert where_missing(record, "question.text") == "'question' has ['stem']"
    assert where_missing(record, "question.stem.x") == "'question.stem' holds a str, not a record"
    assert where_missing(record, "prompt") == "row keys: ['a', 'a.b', 'question']"
    options = {"choices": [{"text": "heat", "label": "A"}, {"text": "cold", "label": "B"}]}
    assert lookup(options, "choices.text") == ["heat", "cold"] and lookup(options, "choices.label") == ["A", "B"]
    assert where_missing(options, "choices.name") == "'choices' holds records with keys ['label', 'text']; " \
                                                    "'name' is not in every one"
    assert where_missing(options, "choices.text.x") == "'choices.text' holds a list, not a record"


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_reads_the_same_in_every_format(tmp_path, fmt, shape):
    records, fields = SHAPES[shape]
    table = load(tmp_path, fmt, records, fields)
    questions, choices, answers = EXPECTED[shape]
    assert table["question"].to_pylist() == questions
    assert table["choices"].to_pylist() == choices
    assert table["answer_index"].to_pylist() == answers
    assert table["answer"].to_pylist() == [c[i] for c, i in zip(choices, answers)]
    assert table["id"].to_pylist() == [r["id"] for r in records]


def test_dotted_paths_reach_id_and_context(tmp_path):
    records = [{"meta": {"uid": f"u{i}", "passage": f"text {i}"}, **{k: v for k, v in r.items() if k != "id"}}
               for i, r in enumerate(OBQA)]
    fields = {**OBQA_FIELDS, "id": "meta.uid", "context": "meta.passage"}
    table = load(tmp_path, "jsonl", records, fields)
    assert table["id"].to_pylist() == ["u0", "u1"] and table["context"].to_pylist() == ["text 0", "text 1"]


def test_a_label_answer_is_not_read_as_a_letter(tmp_path):
    # Labels "1".."4": without data.fields.labels "1" is no letter and no option, so the row fails instead of guessing.
    with pytest.raises(DataError, match=r"line 2: answer '1' is not among the choices.*data\.fields\.labels"):
        load(tmp_path, "jsonl", ARC, {**ARC_FIELDS, "labels": None})
    reversed_labels = [{**OBQA[0], "choices": {**OBQA[0]["choices"], "label": ["B", "A"]}, "answerKey": "B"}]
    table = load(tmp_path, "jsonl", reversed_labels + OBQA[1:], OBQA_FIELDS, split="valid")
    assert table["answer"].to_pylist()[0] == "puppies learning new tricks"  # label B is the first option here


BAD_ROWS = {
    "nested path broken": ({**ARC[1], "question": {"text": "x"}}, ARC, ARC_FIELDS,
                           r"field 'question\.stem' is missing or empty.*'question' has \[.*'text'\]"),
    "label not found": ({**OBQA[1], "answerKey": "E"}, OBQA, OBQA_FIELDS,
                        r"answer 'E' is neither a label \['A', 'B', 'C'\] nor an option"),
    "labels too few": ({**OBQA[1], "choices": {**OBQA[1]["choices"], "label": ["A", "B"]}}, OBQA, OBQA_FIELDS,
                       r"2 labels \['A', 'B'\] for 3 options"),
    "labels repeat": ({**OBQA[1], "choices": {**OBQA[1]["choices"], "label": ["A", "A", "C"]}}, OBQA, OBQA_FIELDS,
                      r"labels \['A', 'A', 'C'\] are empty or repeat"),
    "labels missing": ({**ARC[1], "question": {"stem": "q", "choices": {"text": ["a", "b"]}}},
                       ARC, ARC_FIELDS, r"labels field 'question\.choices\.label' is missing.*'question\.choices' has"),
    "option column gap": ({**LETTERS[1], "B": "", "D": "fins"}, LETTERS, LETTER_FIELDS,
                          r"option column 'B' is empty before a filled one"),
    "option column absent": ({k: v for k, v in LETTERS[1].items() if k != "C"}, LETTERS, LETTER_FIELDS,
                             r"option columns \['C'\] of data\.fields\.choices are missing"),
    "one option filled": ({**LETTERS[1], "B": "", "C": ""}, LETTERS, LETTER_FIELDS, r"fewer than 2 of the option columns"),
    "letter past the options": ({**LETTERS[1], "answer": "D"}, LETTERS, LETTER_FIELDS,
                                r"answer 'D' is not among the choices \['lungs', 'gills', 'skin'\]"),
}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("case", list(BAD_ROWS), ids=list(BAD_ROWS))
def test_a_bad_row_names_file_row_and_fix(tmp_path, fmt, case):
    bad, records, fields, expected = BAD_ROWS[case]
    if fmt == "parquet" and case in ("labels missing", "option column absent"):
        pytest.skip("a Parquet table gives every row the same columns")
    with pytest.raises(DataError) as err:
        load(tmp_path, fmt, [records[0], bad], fields)
    message = str(err.value)
    assert f"train.{fmt}" in message and re.search(r"\b(line|row) 2\b", message), message
    assert re.search(expected, message), message


def test_a_record_or_list_where_text_belongs_fails_with_the_path_to_try(tmp_path):
    # The default mapping on ARC's rows finds a record at 'question': it must not become the question's repr.
    with pytest.raises(DataError, match=r"line 1: field 'question' holds a record with keys \['choices', 'stem'\], "
                                        r"not text; map the text inside it, e.g. data\.fields\.question=question\.stem"):
        load(tmp_path, "jsonl", ARC, {"answer": "answerKey"})
    with pytest.raises(DataError, match=r"line 2: field 'answerKey' holds a list"):
        load(tmp_path, "jsonl", [OBQA[0], {**OBQA[1], "answerKey": ["A"]}], OBQA_FIELDS, split="valid")


def test_csv_option_columns_name_the_csv_row(tmp_path):
    with pytest.raises(DataError, match=r"train\.csv, row 2 \(line 3\): option column 'B' is empty"):
        load(tmp_path, "csv", [LETTERS[0], {**LETTERS[1], "B": "", "D": "fins"}], LETTER_FIELDS)


def test_field_mapping_config_checks():
    assert FieldMapping(choices=["A", "B"]).choices == ["A", "B"]
    for bad in (["A"], ["A", "A"]):
        with pytest.raises(ValueError, match="at least two distinct"):
            FieldMapping(choices=bad)
    with pytest.raises(ValueError, match="cannot be used with data.answer_is_index"):
        DataConfig(format="csv", path="x.csv", answer_is_index=True, fields={"labels": "choices.label"})
    with pytest.raises(ValueError, match="data.hf is read only for data.format=hf"):
        DataConfig(format="csv", path="x.csv", hf={"name": "ARC-Easy"})
    with pytest.raises(ConfigError, match=r"data\.fields\.label: unknown key"):
        load_config("tiny", ["data.fields.label=choices.label"])


def test_option_columns_from_the_command_line():
    job = load_config("tiny", ["data.format=csv", "data.path=x.csv", "data.fields.choices=[A, B, C, D]"])
    assert job.data.fields.choices == ["A", "B", "C", "D"]
