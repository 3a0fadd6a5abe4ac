"""Summaries of run artifacts for `tinyllm-ray inspect`: pure pyarrow over the run layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyllm_ray.schemas import RATIONALE_SCHEMA, read_manifest, read_table


def _teacher_summary(directory: Path) -> dict[str, Any]:
    manifest = read_manifest(directory)
    table = read_table(directory, RATIONALE_SCHEMA)
    rows = table.to_pylist()
    ok = [r for r in rows if not r["error"]]
    summary: dict[str, Any] = {
        "complete": manifest is not None,
        "rows": len(rows),
        "errors": len(rows) - len(ok),
        "mean_generated_tokens": round(sum(r["num_generated_tokens"] for r in ok) / max(len(ok), 1), 1),
    }
    if manifest:
        counts = manifest.get("counts", {})
        summary.update({k: counts[k] for k in ("empty", "degenerate", "truncated", "contradicting") if k in counts})
        summary["model"] = manifest.get("teacher", {}).get("model")
    return summary


def summarize(path: str | Path) -> dict[str, dict[str, Any]]:
    """One entry per artifact found under ``path`` (a run directory or a single artifact folder)."""
    root = Path(path)
    if not root.exists():
        raise SystemExit(f"error: {root} does not exist")
    if (root / "rationales").is_dir() or (root / "problems").is_dir():
        out: dict[str, dict[str, Any]] = {}
        problems = read_manifest(root / "problems")
        out["problems"] = {"complete": problems is not None, **((problems or {}).get("counts", {}))}
        for folder in sorted(p for p in (root / "rationales").glob("*") if p.is_dir() and not p.name.startswith(".")):
            out[f"rationales/{folder.name}"] = _teacher_summary(folder)
        student = read_manifest(root / "student")
        out["student"] = {"complete": student is not None,
                          **{k: (student or {}).get(k) for k in ("optimizer_steps", "teachers", "train_tokens")}}
        evaluation = read_manifest(root / "evaluation")
        out["evaluation"] = {"complete": evaluation is not None, **((evaluation or {}).get("accuracy", {}))}
        return out
    if any(root.glob("*.parquet")):
        return {root.name: _teacher_summary(root)}
    raise SystemExit(f"error: {root} is neither a run directory nor a rationale folder")
