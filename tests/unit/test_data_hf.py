"""``data.format: hf``: real ``datasets`` calls on local fixtures in the hub's shapes (no hub access: the tests run
with HF_HUB_OFFLINE=1). Splits are picked by name; rows fail with the dataset, split and row named."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest

from tinyllm_ray.config import DataConfig
from tinyllm_ray.data import DataError, load_problems
from tinyllm_ray.data_hf import load_splits

# OpenBookQA as the hub serves it (question_stem, choices.text / choices.label, answerKey).
OBQA_FIELDS = {"question": "question_stem", "choices": "choices.text", "labels": "choices.label", "answer": "answerKey"}


def obqa_row(n: int, split: str) -> dict:
    labels = ["A", "B", "C", "D"]
    return {"id": f"{split}-{n}", "question_stem": f"{split} question {n}?",
            "choices": {"text": [f"option {n}{x}" for x in "abcd"], "label": labels}, "answerKey": labels[n % 4]}


def obqa_folder(root: Path, sizes: dict[str, int]) -> Path:
    """A local folder load_dataset reads as the hub would: one JSON Lines file per split, named by the split."""
    root.mkdir(parents=True, exist_ok=True)
    for split, size in sizes.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(obqa_row(n, split)) + "\n" for n in range(size)))
    return root


def hf_config(path: Path | str, tmp_path: Path, **kwargs) -> DataConfig:
    hf = {"cache_dir": str(tmp_path / "hf_cache"), **kwargs.pop("hf", {})}
    return DataConfig(format="hf", path=str(path), fields=OBQA_FIELDS, hf=hf, **kwargs)


def test_a_local_folder_reads_by_split_name(tmp_path):
    config = hf_config(obqa_folder(tmp_path / "openbookqa", {"train": 5, "validation": 3, "test": 2}), tmp_path,
                       eval_split="validation", max_train_problems=4)
    train, valid = load_problems(config, "train"), load_problems(config, "validation")
    assert train.num_rows == 4 and valid.num_rows == 3  # max_train_problems stops reading the train split
    assert set(train["dataset"].to_pylist()) == {"openbookqa"}  # named after the folder by default
    assert train["id"].to_pylist()[:2] == ["train-0", "train-1"] and train["answer_index"].to_pylist() == [0, 1, 2, 3]
    assert valid["answer"].to_pylist() == ["option 0a", "option 1b", "option 2c"]
    assert sorted(load_splits(config)) == ["test", "train", "validation"]


def test_an_unknown_split_lists_the_ones_there(tmp_path):
    config = hf_config(obqa_folder(tmp_path / "obqa", {"train": 2, "validation": 2}), tmp_path)
    with pytest.raises(DataError, match=r"has splits \['train', 'validation'\], not 'valid'; set data\.train_split"):
        load_problems(config, "valid")  # the default eval_split is the TinyLLM name, the hub says validation


def test_a_save_to_disk_folder_and_a_lone_saved_split(tmp_path):
    source = obqa_folder(tmp_path / "src", {"train": 3, "validation": 2})
    loaded = datasets.load_dataset(str(source), cache_dir=str(tmp_path / "hf_cache"))
    loaded.save_to_disk(str(tmp_path / "saved"))
    config = hf_config(tmp_path / "saved", tmp_path, eval_split="validation", dataset="obqa")
    assert load_problems(config, "validation")["id"].to_pylist() == ["validation-0", "validation-1"]
    loaded["train"].save_to_disk(str(tmp_path / "one"))  # a lone Dataset keeps the name of the split it came from
    assert load_problems(hf_config(tmp_path / "one", tmp_path), "train").num_rows == 3


def test_data_files_name_the_splits_for_a_builder(tmp_path):
    # One column per option and an answer letter, as many CSV files have; the builder is data.path.
    for split, rows in (("train", 3), ("dev", 2)):
        with open(tmp_path / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["question", "A", "B", "C", "D", "answer"])
            writer.writerows([f"q{split}{n}", f"a{n}", f"b{n}", f"c{n}", f"d{n}", "ABCD"[n]] for n in range(rows))
    files = {"train": str(tmp_path / "train.csv"), "dev": str(tmp_path / "dev.csv")}
    config = DataConfig(format="hf", path="csv", dataset="letters", eval_split="dev",
                        fields={"choices": ["A", "B", "C", "D"]},
                        hf={"data_files": files, "cache_dir": str(tmp_path / "hf_cache")})
    dev = load_problems(config, "dev")
    assert dev["answer"].to_pylist() == ["a0", "b1"] and dev["id"].to_pylist() == ["letters-dev-1", "letters-dev-2"]


def test_a_bad_row_names_dataset_split_and_row(tmp_path):
    folder = obqa_folder(tmp_path / "obqa", {"train": 3})
    rows = (folder / "train.jsonl").read_text().splitlines()
    bad = json.loads(rows[2]) | {"answerKey": "E"}
    (folder / "train.jsonl").write_text("\n".join(rows[:2] + [json.dumps(bad)]) + "\n")
    with pytest.raises(DataError, match=r"obqa \[train\], row 3: answer 'E' is neither a label"):
        load_problems(hf_config(folder, tmp_path), "train")


def test_a_hub_id_offline_fails_with_what_to_do(tmp_path):
    config = hf_config("allenai/openbookqa", tmp_path, hf={"name": "main"})
    with pytest.raises(DataError, match=r"allenai/openbookqa \(main\): datasets could not load it .*hub id"):
        load_problems(config, "train")


def test_what_selects_the_data_counts_in_the_problems_fingerprint_and_the_cache_does_not():
    from tinyllm_ray.config import fingerprint_view

    base = DataConfig(format="hf", path="allenai/ai2_arc", hf={"name": "ARC-Easy"})
    assert fingerprint_view(base)["hf"] == {"name": "ARC-Easy", "data_files": None, "revision": None}
    moved_cache = base.model_copy(update={"hf": base.hf.model_copy(update={"cache_dir": "/scratch/hf"})})
    assert fingerprint_view(moved_cache) == fingerprint_view(base)
    other_config = DataConfig(format="hf", path="allenai/ai2_arc", hf={"name": "ARC-Challenge"})
    assert fingerprint_view(other_config) != fingerprint_view(base)
    assert "hf" not in fingerprint_view(DataConfig(format="hf", path="allenai/ai2_arc"))  # older configs keep theirs
