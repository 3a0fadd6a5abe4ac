"""`tinyllm-ray data show`: the problems as the job reads them and the count per split; a wrong field mapping
stops with one message that says what the rows hold, so the fix takes one more try."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from tinyllm_ray.cli import app
from tinyllm_ray.config import load_config

ARC = [
    {"id": "Mercury_1", "question": {"stem": "Which is a source of light?",
                                     "choices": {"text": ["a rock", "the Sun", "a mirror"], "label": ["A", "B", "C"]}},
     "answerKey": "B"},
    {"id": "Mercury_2", "question": {"stem": "What do plants need to grow?",
                                     "choices": {"text": ["water", "sand"], "label": ["1", "2"]}}, "answerKey": "1"},
    {"id": "Mercury_3", "question": {"stem": "What is ice made of?",
                                     "choices": {"text": ["stone", "water"], "label": ["A", "B"]}}, "answerKey": "B"},
]
ARC_FIELDS = ["data.fields.question=question.stem", "data.fields.choices=question.choices.text",
              "data.fields.labels=question.choices.label", "data.fields.answer=answerKey"]


def arc_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ARC[:2]))
    (root / "valid.jsonl").write_text(json.dumps(ARC[2]) + "\n")
    return root


def show(*args: str, sets: list[str] = ()):
    result = CliRunner().invoke(app, ["data", "show", *args, *[a for s in sets for a in ("--set", s)]])
    return result


def test_show_prints_problems_and_counts_from_a_config_file(tmp_path):
    folder = arc_folder(tmp_path / "arc")
    job = load_config("tiny").model_dump(mode="json")
    job["data"] = {"format": "jsonl", "path": str(folder), "dataset": "arc",
                   "fields": {"question": "question.stem", "choices": "question.choices.text",
                              "labels": "question.choices.label", "answer": "answerKey"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    result = show(str(tmp_path / "job.yaml"), "-n", "5")
    assert result.exit_code == 0, result.output
    assert "problems: train 2 (data.train_split), valid 1 (data.eval_split)" in result.output
    assert "train, first 2 of 2:" in result.output
    assert ("[1] Mercury_1\nWhich is a source of light?\n  (a) a rock\n* (b) the Sun\n  (c) a mirror\n"
            "answer: (b) the Sun") in result.output
    assert "answer: (a) water" in result.output  # label "1" is the first option, not a letter
    assert "fields: id=id, question=question.stem, choices=question.choices.text, answer=answerKey, " \
           "labels=question.choices.label" in result.output


def test_a_wrong_mapping_fails_once_with_the_keys_then_the_fix_works(tmp_path):
    folder = arc_folder(tmp_path / "arc")
    base = ["data.format=jsonl", f"data.path={folder}"]
    result = show("tiny", sets=base)
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.count("\n") == 0 and message.startswith("error: ")  # one clear line
    # the default mapping finds a record at 'question': named, with the path to try, not written out as its repr
    assert ("train.jsonl, line 1: field 'question' holds a record with keys ['choices', 'stem'], not text; "
            "map the text inside it, e.g. data.fields.question=question.stem") in message
    fixed = show("tiny", "--split", "valid", "-n", "1", sets=base + ARC_FIELDS)
    assert fixed.exit_code == 0, fixed.output
    assert "valid, first 1 of 1:\n\n[1] Mercury_3\nWhat is ice made of?" in fixed.output


def test_show_lists_every_split_of_a_hugging_face_source(tmp_path):
    folder = arc_folder(tmp_path / "arc")
    (folder / "valid.jsonl").rename(folder / "validation.jsonl")
    (folder / "test.jsonl").write_text(json.dumps(ARC[2]) + "\n")
    base = ["data.format=hf", f"data.path={folder}", f"data.hf.cache_dir={tmp_path / 'cache'}", *ARC_FIELDS]
    result = show("tiny", "-n", "0", sets=base + ["data.eval_split=validation"])
    assert result.exit_code == 0, result.output
    assert "problems: train 2 (data.train_split, max 16), validation 1 (data.eval_split, max 8)" in result.output
    assert "in the source: test 1 rows, train 2 rows, validation 1 rows" in result.output
    assert "[1]" not in result.output  # -n 0: counts only
    wrong_split = show("tiny", sets=base)  # the TinyLLM name 'valid' is not a hub split name
    assert wrong_split.exit_code == 2
    assert "has splits ['test', 'train', 'validation'], not 'valid'" in wrong_split.stderr


def test_bad_config_keys_exit_2_with_the_dotted_path():
    result = show("tiny", sets=["data.fields.label=choices.label"])
    assert result.exit_code == 2 and "data.fields.label: unknown key" in result.stderr
