"""What one dataset folder of the TinyLLM repository (YikunHan42/TinyLLM, ``datasets/<name>/``) holds, and how to
tell that a downloaded copy of a file is whole. Pure: no network, no writes.

The file names follow the repository's layout, the one :func:`tinyllm_ray.data.load_problems` (``format:
tinyllm``) and :func:`tinyllm_ray.data.load_tinyllm_rationales` read: ``<name>_{train,valid,test}.json``, and
``llm/<split>_CoT_<k>.json`` holding rows ``500*k ..`` of that split, so the rationale files follow from the
problem counts. Row counts are pinned where a copy was checked (obqa, arc, pubmedqa); elsewhere a file must parse
and be a non-empty list.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .data import TINYLLM_CHUNK, DataError, json_rows
from .errors import TinyLLMError

REPOSITORY = "YikunHan42/TinyLLM"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{REPOSITORY}/main/datasets"
BASE_URL_ENV = "TINYLLM_RAY_DATA_URL"  # overrides DEFAULT_BASE_URL (a mirror, or a test server)
SPLITS = ("train", "valid", "test")
RATIONALES_FOLDER = "llm"


class FetchError(TinyLLMError):
    """A dataset cannot be fetched or a fetched file is not what the repository ships; names the file."""


@dataclass(frozen=True)
class DatasetSpec:
    """One folder of the repository's ``datasets/``."""

    name: str  # the folder name, also the file prefix
    title: str
    options: int  # answer options per problem
    rows: Mapping[str, int] | None  # problems per split, where a copy was counted; None: not pinned here
    note: str = ""

    def describe(self) -> str:
        return f"{self.name} ({self.title}, {self.options} options{'; ' + self.note if self.note else ''})"


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("obqa", "OpenBookQA", 4, {"train": 4957, "valid": 500, "test": 500}, "problem files are JSON Lines"),
    DatasetSpec("arc", "ARC", 4, {"train": 1117, "valid": 295, "test": 1165}),
    DatasetSpec("pubmedqa", "PubMedQA", 3, {"train": 500, "valid": 100, "test": 400},
                "yes / no / maybe; each question is a long abstract with the question at its end"),
    DatasetSpec("piqa", "PIQA", 2, None),
    DatasetSpec("riddle", "RiddleSense", 5, None),
    DatasetSpec("bioasq", "BioASQ (yes/no)", 2, None, "yes / no; long contexts before the question"),
)}


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset folder: its path inside the folder and what a whole copy holds."""

    path: str  # e.g. "arc_train.json" or "llm/train_CoT_0.json"
    kind: Literal["problems", "rationales"]
    rows: int | None  # exact row count a whole copy has; None: any non-empty list


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise FetchError(f"unknown dataset {name!r}; the TinyLLM repository ({REPOSITORY}) has: "
                         f"{', '.join(DATASETS)}")
    return DATASETS[name]


def problem_files(spec: DatasetSpec) -> list[RemoteFile]:
    return [RemoteFile(f"{spec.name}_{split}.json", "problems", spec.rows[split] if spec.rows else None)
            for split in SPLITS]


def rationale_files(split: str, problems: int) -> list[RemoteFile]:
    """The ``llm/`` files of one split with ``problems`` rows: one per started chunk of TINYLLM_CHUNK rows."""
    chunks = max(1, -(-problems // TINYLLM_CHUNK))
    return [RemoteFile(f"{RATIONALES_FOLDER}/{split}_CoT_{k}.json", "rationales",
                       min(TINYLLM_CHUNK, problems - k * TINYLLM_CHUNK)) for k in range(chunks)]


def split_of(file: RemoteFile) -> str:
    """The split a problem file belongs to (``arc_valid.json`` -> ``valid``)."""
    return file.path.rsplit("_", 1)[-1].removesuffix(".json")


def count_rows(file: RemoteFile, text: str) -> int:
    """Rows in a copy of ``file`` after checking it parses and is whole; raises :class:`FetchError` naming it."""
    if file.kind == "problems":
        try:
            rows = sum(1 for _ in json_rows(text, file.path))
        except DataError as err:  # its message already names the file and the line
            raise FetchError(f"{err} (a truncated or wrong download?)") from None
    else:
        try:
            texts = json.loads(text)
        except json.JSONDecodeError as err:
            raise FetchError(f"{file.path}, line {err.lineno}: not valid JSON ({err.msg}); a truncated or "
                             "wrong download?") from None
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise FetchError(f"{file.path}: expected a JSON array of rationale strings, got "
                             f"{type(texts).__name__ if not isinstance(texts, list) else 'other values inside'}")
        rows = len(texts)
    if rows == 0:
        raise FetchError(f"{file.path}: no rows; expected a non-empty list")
    if file.rows is not None and rows != file.rows:
        raise FetchError(f"{file.path}: {rows} rows, expected {file.rows}; the download is incomplete or the "
                         f"repository changed")
    return rows
