"""Summaries of run artifacts for `tinyllm-ray inspect`: pure pyarrow over the run layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from tinyllm_ray.layout import RunLayout
from tinyllm_ray.schemas import RATIONALE_SCHEMA, ArtifactError, read_manifest, read_table

QUALITY_COUNTS = ("empty", "degenerate", "truncated", "contradicting")


def _teacher_summary(directory: Path) -> dict[str, Any]:
    from tinyllm_ray.generation_plan import shard_problem

    manifest = read_manifest(directory)
    parts, damaged = [], []
    for file in sorted(directory.glob("*.parquet")):
        problem = shard_problem(file)
        if problem:
            damaged.append(f"{file.name}: {problem}")
        else:
            parts.append(read_table(file, RATIONALE_SCHEMA, columns=["num_generated_tokens", "error"]))
    table = pa.concat_tables(parts) if parts else RATIONALE_SCHEMA.empty_table()
    tokens, errors = table.column("num_generated_tokens").to_pylist(), table.column("error").to_pylist()
    ok = [n for n, e in zip(tokens, errors) if not e]
    summary: dict[str, Any] = {
        "complete": manifest is not None,
        "rows": len(tokens),
        "errors": len(tokens) - len(ok),
        "mean_generated_tokens": round(sum(ok) / max(len(ok), 1), 1),
    }
    if manifest:
        counts = manifest.get("counts", {})
        summary.update({k: counts[k] for k in QUALITY_COUNTS if k in counts})
        summary["model"] = manifest.get("teacher", {}).get("model")
        if not damaged and counts.get("rows", len(tokens)) != len(tokens):
            damaged.append(f"{len(tokens)} rows where the manifest counts {counts['rows']}")
    if damaged:
        summary["complete"] = False  # until `generate` has written the damaged shards again
        summary["damaged"] = damaged
    return summary


def _complete(directory: Path, *keys: str) -> dict[str, Any]:
    """``complete`` and the named manifest entries (``counts``' entries when ``keys`` is empty)."""
    manifest = read_manifest(directory) or {}
    fields = {k: manifest.get(k) for k in keys} if keys else manifest.get("counts", {})
    return {"complete": bool(manifest), **fields}


def summarize(path: str | Path) -> dict[str, dict[str, Any]]:
    """One entry per artifact found under ``path`` (a run directory or a single teacher folder)."""
    root = Path(path)
    if not root.exists():
        raise ArtifactError(f"{root} does not exist")
    layout = RunLayout.of(str(root))
    if layout.rationales.is_dir() or layout.problems.is_dir():
        out: dict[str, dict[str, Any]] = {"problems": _complete(layout.problems)}
        for folder in sorted(p for p in layout.rationales.glob("*") if p.is_dir() and not p.name.startswith(".")):
            out[f"rationales/{folder.name}"] = _teacher_summary(folder)
        out["student"] = _complete(layout.student, "optimizer_steps", "teachers", "train_tokens")
        evaluation = read_manifest(layout.evaluation)
        out["evaluation"] = {"complete": evaluation is not None, **((evaluation or {}).get("accuracy", {}))}
        return out
    if any(root.glob("*.parquet")):
        return {root.name: _teacher_summary(root)}
    raise ArtifactError(f"{root} is neither a run directory (output_dir) nor a teacher's rationale folder")
