"""The frozen problems artifact: the train and eval splits, validated once and written as Parquet, which every later
stage (teachers, training, evaluation) reads instead of the user's files."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from tinyllm_ray.artifacts import reusable
from tinyllm_ray.config import JobConfig, fingerprint_view, stable_hash
from tinyllm_ray.data import DataError, load_problems
from tinyllm_ray.layout import MANIFEST, RunLayout
from tinyllm_ray.schemas import PROBLEM_SCHEMA, ArtifactError, read_manifest, read_table, write_manifest, write_table

# Teacher actors read their shard's rows straight from the frozen problems file: small row groups keep that read
# (and the actor's memory) proportional to the shard, not to the dataset.
PROBLEM_ROW_GROUP = 1024
ROLES = ("train", "eval")


def problems_fingerprint(config: JobConfig) -> str:
    return stable_hash(fingerprint_view(config.data))


def prepare_problems(config: JobConfig, layout: RunLayout, force: bool = False) -> dict[str, Any]:
    """Load, validate and freeze the train and eval problems as Parquet (reused when the data config is unchanged);
    returns the problems manifest."""
    fingerprint = problems_fingerprint(config)
    manifest = reusable(layout.problems, fingerprint, force,
                        refuse="Every later artifact depends on it: use a new output_dir, or pass --force to rebuild "
                               "(rationales are then regenerated).")
    if manifest is not None:
        return manifest
    tables = {"train": load_problems(config.data, config.data.train_split),
              "eval": load_problems(config.data, config.data.eval_split)}
    overlap = set(tables["train"].column("id").to_pylist()) & set(tables["eval"].column("id").to_pylist())
    if overlap:
        raise DataError(f"{len(overlap)} problem ids appear in both train and eval splits, e.g. {sorted(overlap)[:3]}")
    layout.problems.mkdir(parents=True, exist_ok=True)
    (layout.problems / MANIFEST).unlink(missing_ok=True)
    for role, table in tables.items():
        write_table(table, layout.problem_file(role), row_group_size=PROBLEM_ROW_GROUP)
    return write_manifest(layout.problems, fingerprint=fingerprint, data=config.data.model_dump(mode="json"),
                          counts={role: t.num_rows for role, t in tables.items()})


def require_frozen_problems(layout: RunLayout) -> None:
    """The frozen problems are complete (their manifest exists), or an error that says what to run."""
    if read_manifest(layout.problems) is None:
        raise ArtifactError(f"{layout.problems} is missing or incomplete: run `tinyllm-ray generate` first")


def load_frozen_problems(layout: RunLayout, role: str) -> pa.Table:
    """One frozen split (``train`` or ``eval``), validated against the problem schema."""
    require_frozen_problems(layout)
    return read_table(layout.problem_file(role), PROBLEM_SCHEMA)
