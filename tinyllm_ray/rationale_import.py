"""Rationales that already exist (``kind: imported``): read them from the TinyLLM repository's ``llm/`` files or
from a file of rows, check them against the frozen train problems, and hand them over as one small table.

Pure pyarrow: no Ray. Validation finishes before anything is written, and every bad input names its file and row:
an id that is not among the problems, a duplicate id, an unreadable file or a record of the wrong shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from tinyllm_ray.config import ImportSource
from tinyllm_ray.data import DataError, json_rows, load_tinyllm_rationales, read_records, tinyllm_file
from tinyllm_ray.quality import cut_after_answer

IMPORTED_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False),
                             pa.field("rationale", pa.string(), nullable=False)])
FINISH_IMPORTED = "imported"  # finish_reason of an imported rationale
FINISH_MISSING = "missing"  # finish_reason of a problem the source has no rationale for (an empty rationale)


@dataclass(frozen=True)
class ImportedRationales:
    """A validated import: one row per problem that has a rationale, and what the manifest counts."""

    table: pa.Table  # IMPORTED_SCHEMA, in source order
    missing: int  # problems without a rationale (absent from the source, or blank there)
    cut: int  # rationales shortened by the answer-statement rule (quality.cut_after_answer)
    outside: int  # source rows for problems that data.max_train_problems left out (skipped)
    source: str  # the file or folder read


def source_label(source: ImportSource) -> str:
    if source.format == "tinyllm":
        return f"{Path(source.path) / 'llm'} ({source.teacher}, {source.split})"
    return str(Path(source.path))


def _records(source: ImportSource) -> Iterator[tuple[str, Any, Any]]:
    """(where, id, rationale) for every record of the source, in order."""
    if source.format == "tinyllm":
        folder = Path(source.path)
        problems = tinyllm_file(folder, source.split)
        texts = load_tinyllm_rationales(folder, source.split, cut=False)[source.teacher]
        ids = [record.get("id") if isinstance(record, dict) else None
               for _, record in json_rows(problems.read_text(encoding="utf-8"), str(problems))]
        for position, (problem_id, text) in enumerate(zip(ids, texts)):
            chunk, row = divmod(position, 500)
            yield f"{folder / 'llm'}/{source.split}_CoT_{chunk}.json, record {row + 1}", problem_id, text
        return
    path = Path(source.path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; check teachers[].source.path")
    for where, record in read_records(path, source.format):
        if not isinstance(record, dict):
            raise DataError(f"{path}, {where}: expected an object with {source.id_field!r} and "
                            f"{source.rationale_field!r}, got {type(record).__name__}")
        for key in (source.id_field, source.rationale_field):
            if key not in record:
                raise DataError(f"{path}, {where}: field {key!r} is missing (has {sorted(record)}); set "
                                f"teachers[].source.{'id_field' if key == source.id_field else 'rationale_field'}")
        yield f"{path}, {where}", record[source.id_field], record[source.rationale_field]


def read_imported(source: ImportSource, problem_ids: Sequence[str], subset: bool = False) -> ImportedRationales:
    """Read and validate ``source`` against the frozen train problems' ids.

    ``subset``: the problems are a prefix of the dataset (``data.max_train_problems``), so source rows for other
    problems are skipped and counted instead of refused."""
    known = set(problem_ids)
    seen: dict[str, str] = {}
    ids: list[str] = []
    texts: list[str] = []
    cut = outside = 0
    for where, raw_id, text in _records(source):
        if raw_id is None or isinstance(raw_id, (dict, list, bool)) or str(raw_id).strip() == "":
            raise DataError(f"{where}: the id is missing or not a string/number ({raw_id!r})")
        problem_id = str(raw_id)
        if problem_id in seen:
            raise DataError(f"{where}: duplicate id {problem_id!r} (first at {seen[problem_id]}); keep one rationale "
                            "per problem in the source")
        seen[problem_id] = where
        if problem_id not in known:
            if subset:
                outside += 1
                continue
            raise DataError(f"{where}: id {problem_id!r} is not among the {len(known)} train problems; the source "
                            "belongs to another dataset or split (check teachers[].source and data)")
        if text is None or (isinstance(text, float) and text != text):  # null / NaN: no rationale
            continue
        if not isinstance(text, str):
            raise DataError(f"{where}: the rationale must be a string, got {type(text).__name__}")
        if source.cut_after_answer:
            text, was_cut = cut_after_answer(text)
            cut += was_cut
        text = text.strip()
        if text:
            ids.append(problem_id)
            texts.append(text)
    table = pa.table({"id": ids, "rationale": texts}, schema=IMPORTED_SCHEMA)
    return ImportedRationales(table, missing=len(known) - len(ids), cut=cut, outside=outside,
                              source=source_label(source))
