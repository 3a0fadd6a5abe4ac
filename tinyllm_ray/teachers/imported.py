"""The imported teacher (``kind: imported``): rationales that already exist, read from files instead of generated.

On the driver, :func:`prepare` reads and validates the whole source against the frozen train problems
(:mod:`tinyllm_ray.rationale_import`) and only then writes it, as one small Parquet file, where the actors read it;
a bad source stops the stage before any shard is written. Each actor looks its shard's problems up by id, so the
rows land in the same shards, schema and manifest as generated ones. No engine, no GPU; teachers have no answers to
the eval questions, so imported teachers are not scored.
"""

from __future__ import annotations

from typing import Any

from tinyllm_ray.config import ImportedTeacherConfig
from tinyllm_ray.generation_plan import GenerationError
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.teachers.base import Rationales, placement_args, rationale_row

IMPORT_FOOTER = "import"  # key of the import's counts in the Parquet footer of the validated file


def prepare(teacher: ImportedTeacherConfig, layout: RunLayout) -> str:
    """Validate the source against the frozen train problems and write it for the actors; returns its path."""
    import pyarrow.parquet as pq

    from tinyllm_ray.rationale_import import read_imported
    from tinyllm_ray.schemas import read_manifest, write_table

    problems = read_manifest(layout.problems) or {}
    ids = pq.read_table(layout.problem_file("train"), columns=["id"]).column("id").to_pylist()
    subset = bool((problems.get("data") or {}).get("max_train_problems"))
    imported = read_imported(teacher.source, ids, subset=subset)
    path = layout.imported_rationales(teacher.name)
    write_table(imported.table, path, footer={IMPORT_FOOTER: describe_import(imported)})
    return str(path)


def describe_import(imported) -> dict[str, Any]:
    """What the teacher manifest records of an import: its source and what was missing, cut or skipped."""
    return {"source": imported.source, "rationales": imported.table.num_rows, "missing": imported.missing,
            "cut": imported.cut, "outside_problems": imported.outside}


def manifest_fields(teacher: ImportedTeacherConfig, model_path: str) -> dict[str, Any]:
    from tinyllm_ray.schemas import read_footer

    return {IMPORT_FOOTER: read_footer(model_path)[IMPORT_FOOTER]}


def remote_args(teacher: ImportedTeacherConfig) -> dict[str, Any]:
    return {**placement_args(teacher.resources), "num_gpus": 0}


class ImportedTeacher:
    """Looks rationales up by problem id in the validated import (a few MB for the paper's datasets)."""

    def __init__(self, teacher: ImportedTeacherConfig, model_path: str):
        import pyarrow.parquet as pq

        table = pq.read_table(model_path)
        self.config = teacher
        self.by_id = dict(zip(table.column("id").to_pylist(), table.column("rationale").to_pylist()))

    def rationales(self, problems: list[dict[str, Any]], demos: list[list[dict[str, Any]]], mode: str,
                   sampling: dict[str, Any]) -> Rationales:
        from tinyllm_ray.rationale_import import FINISH_IMPORTED, FINISH_MISSING

        if mode != "rationale":
            raise GenerationError(f"teacher {self.config.name!r} is imported: it has rationales, not answers")
        rows = []
        for problem in problems:
            row = rationale_row(self.config, problem, {})
            text = self.by_id.get(problem["id"])
            row.update(rationale=text or "", finish_reason=FINISH_IMPORTED if text else FINISH_MISSING)
            rows.append(row)
        return Rationales(rows)

    def close(self) -> None:
        self.by_id = {}
