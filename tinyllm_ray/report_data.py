"""What `tinyllm-ray report` shows, gathered from a run's artifacts (pure pyarrow/JSON over :class:`RunLayout`; no
Ray, no plotting). Every gatherer tolerates missing artifacts (a run in progress, a sweep without teachers' answers):
it returns what exists and says what does not in ``missing``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyllm_ray.evaluate import score, summarise
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.metrics import read_tensorboard_scalars
from tinyllm_ray.prompts import LETTERS
from tinyllm_ray.quality import FLAGS, row_flags, words
from tinyllm_ray.schemas import PROBLEM_SCHEMA, RATIONALE_SCHEMA, ArtifactError, read_manifest, read_table
from tinyllm_ray.stats import LEVEL, wilson_interval

EXAMPLE_QUESTIONS = 3  # questions shown with every teacher's rationale side by side
TOTAL_LOSS = "total"  # the weighted objective, beside the per-task losses
_STATED_ANSWER = re.compile(r"answer is\s*\(([a-z])\)")  # as quality's ``contradicting`` rule reads it


@dataclass
class TeacherStats:
    """One teacher's rationales: lengths in words, quality flags, agreement with the gold answer, tokens, time."""

    name: str
    model: str | None
    kind: str | None
    complete: bool
    rows: int
    errors: int
    word_counts: list[int]
    flags: dict[str, int]
    agreement: dict[str, int]  # agrees / contradicts / no_answer: the option the rationale's last "answer is" names
    prompt_tokens: int | None
    generated_tokens: int | None
    seconds: float | None


@dataclass
class TrainingCurve:
    """Loss per task over optimizer steps of one run (a sweep trial or the run itself)."""

    name: str
    source: str  # where the numbers came from: the student manifest, or TensorBoard events of a run in progress
    losses: dict[str, list[tuple[int, float]]]  # task (or TOTAL_LOSS) -> [(step, loss)]


@dataclass
class ReportData:
    root: Path
    job: str | None
    dataset: str | None
    accuracy: list[dict[str, Any]]  # report entries: name, role, method, accuracy, correct, total, interval
    accuracy_source: str | None
    curves: list[TrainingCurve]
    teachers: list[TeacherStats]
    examples: list[dict[str, Any]]  # question, choices, answer, rationales {teacher: text}
    sweep: dict[str, Any] | None  # results.json of a sweep
    missing: list[str] = field(default_factory=list)

    @property
    def is_sweep(self) -> bool:
        return self.sweep is not None


def stated_option(rationale: str) -> int | None:
    """The option index named by a rationale's last "the answer is (x)", or None when it names none."""
    named = _STATED_ANSWER.findall(str(rationale).lower())
    return LETTERS.index(named[-1]) if named else None


def agreement_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many rationales (rows joined with their problem's ``answer_index``) end on the gold option, on another
    one, or name no option at all; failed rows are skipped."""
    counts = {"agrees": 0, "contradicts": 0, "no_answer": 0}
    for row in rows:
        if row.get("error"):
            continue
        named = stated_option(row.get("rationale") or "")
        key = "no_answer" if named is None else "agrees" if named == row.get("answer_index") else "contradicts"
        counts[key] += 1
    return counts


def flag_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The quality flags of the rows that did not fail (``quality.row_flags``), and how many carry any flag."""
    counts = {flag: 0 for flag in FLAGS} | {"flagged": 0}
    for row in rows:
        if row.get("error"):
            continue
        flags = row_flags(row)
        counts["flagged"] += bool(flags)
        for flag in flags:
            counts[flag] += 1
    return counts


def curve_from_manifest(name: str, losses: Sequence[Mapping[str, Any]]) -> TrainingCurve:
    """The student manifest's ``losses`` (rank 0 every ``log_every_steps``) as per-task series."""
    series: dict[str, list[tuple[int, float]]] = {TOTAL_LOSS: []}
    for entry in losses:
        series[TOTAL_LOSS].append((int(entry["step"]), float(entry["loss"])))
        for task, value in entry.get("task_losses", {}).items():
            series.setdefault(task, []).append((int(entry["step"]), float(value)))
    return TrainingCurve(name, "student manifest", series)


def curve_from_scalars(name: str, scalars: Mapping[tuple[str, int], float]) -> TrainingCurve:
    """TensorBoard scalars ``loss`` and ``loss/<task>`` (every step) as per-task series."""
    series: dict[str, list[tuple[int, float]]] = {}
    for (tag, step), value in sorted(scalars.items(), key=lambda item: item[0][1]):
        if tag == "loss" or tag.startswith("loss/"):
            series.setdefault(TOTAL_LOSS if tag == "loss" else tag.split("/", 1)[1], []).append((step, value))
    return TrainingCurve(name, "TensorBoard events (training not finished)", series)


def training_curve(name: str, layout: RunLayout) -> TrainingCurve | None:
    """A finished run's losses from its student manifest; a run in progress's from its TensorBoard events."""
    student = read_manifest(layout.student)
    if student and student.get("losses"):
        return curve_from_manifest(name, student["losses"])
    events = layout.metrics / "train"
    curve = curve_from_scalars(name, read_tensorboard_scalars(events)) if events.is_dir() else None
    return curve if curve and curve.losses else None


def _problems(layout: RunLayout, role: str) -> dict[str, dict[str, Any]]:
    path = layout.problem_file(role)
    return {p["id"]: p for p in read_table(path, PROBLEM_SCHEMA).to_pylist()} if path.is_file() else {}


def teacher_stats(folder: Path, problems: Mapping[str, Mapping[str, Any]]) -> tuple[TeacherStats, list[dict]]:
    """One teacher folder's statistics, and its rows joined with their problems (for the examples)."""
    manifest = read_manifest(folder) or {}
    rows = [{**problems.get(r["id"], {}), **r} for r in read_table(folder, RATIONALE_SCHEMA).to_pylist()]
    ok = [r for r in rows if not r["error"]]
    counts = manifest.get("counts", {})
    imported = manifest.get("teacher", {}).get("kind") == "imported"  # no engine ran: no tokens to count
    generated = counts.get("generated_tokens", sum(r["num_generated_tokens"] for r in ok))
    prompt = counts.get("prompt_tokens", sum(r["num_prompt_tokens"] for r in ok))
    stats = TeacherStats(
        name=folder.name, model=manifest.get("teacher", {}).get("model") or (rows[0]["model"] if rows else None),
        kind=manifest.get("teacher", {}).get("kind"), complete=bool(manifest), rows=len(rows),
        errors=len(rows) - len(ok), word_counts=[len(words(r["rationale"])) for r in ok], flags=flag_counts(rows),
        agreement=agreement_counts(rows), prompt_tokens=None if imported else prompt,
        generated_tokens=None if imported else generated, seconds=manifest.get("seconds"))
    return stats, rows


def examples(rows_by_teacher: Mapping[str, Sequence[Mapping[str, Any]]], count: int = EXAMPLE_QUESTIONS,
             problems: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The first ``count`` questions (in problem order, else id order) every teacher has a rationale for, each
    with the rationales side by side."""
    by_teacher = {t: {r["id"]: r for r in rows if not r.get("error")} for t, rows in rows_by_teacher.items()}
    if not by_teacher:
        return []
    shared = set.intersection(*(set(rows) for rows in by_teacher.values()))
    order = [i for i in problems if i in shared] or sorted(shared)
    out = []
    for problem_id in order[:count]:
        first = next(iter(by_teacher.values()))[problem_id]
        out.append({"id": problem_id, "question": first.get("question", ""), "choices": first.get("choices") or [],
                    "answer": first.get("answer", ""),
                    "rationales": {t: rows[problem_id]["rationale"] for t, rows in by_teacher.items()}})
    return out


def teacher_accuracy_from_answers(layout: RunLayout, eval_problems: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """Teachers' accuracy scored from their saved eval answers, as `evaluate` scores them (a sweep has no run-level
    report, but its teachers may have answered the eval split)."""
    out = []
    problems = list(eval_problems.values())
    for folder in sorted(p for p in layout.teacher_answers.glob("*") if p.is_dir()):
        if read_manifest(folder) is None or not problems:
            continue
        by_id = {r["id"]: r["rationale"] for r in read_table(folder, RATIONALE_SCHEMA).to_pylist()}
        scored = score(problems, [by_id.get(p["id"], "") for p in problems], parse=True)
        out.append({"name": folder.name, "role": "teacher", "method": "generate",
                    **summarise(scored["predictions"])})
    return out


def gather(path: str | Path) -> ReportData:
    """Everything the report shows for the run (or sweep) at ``path``."""
    layout = RunLayout.of(str(path))
    if not (layout.problems.is_dir() or layout.rationales.is_dir() or layout.sweep.is_dir()):
        raise ArtifactError(f"{layout.root} is not a run directory (no problems, rationales or sweep folder)")
    missing: list[str] = []
    config = read_manifest(layout.problems) or {}
    train_problems, eval_problems = _problems(layout, "train"), _problems(layout, "eval")
    teachers, rows_by_teacher = [], {}
    for folder in sorted(p for p in layout.rationales.glob("*") if p.is_dir() and not p.name.startswith(".")):
        stats, rows = teacher_stats(folder, train_problems)
        teachers.append(stats)
        rows_by_teacher[folder.name] = rows
    if not teachers:
        missing.append(f"no teacher rationales under {layout.rationales}")
    sweep = json.loads(layout.sweep_results("json").read_text()) if layout.sweep_results("json").is_file() else None
    report = json.loads(layout.report_json.read_text()) if layout.report_json.is_file() else None
    accuracy, source = [], None
    if report:
        accuracy, source = [_without_predictions(r) for r in report["results"]], str(layout.report_json)
    elif (answers := teacher_accuracy_from_answers(layout, eval_problems)):
        accuracy, source = answers, f"teachers' answers under {layout.teacher_answers}"
    if not report and sweep is None:  # a sweep's accuracies are its trials'
        missing.append(f"no run-level evaluation report at {layout.report_json}")
    curves = _curves(layout)
    if not curves:
        missing.append("no training losses (no finished student, no TensorBoard events)")
    return ReportData(root=layout.root, job=(report or {}).get("job") or _job_name(layout),
                      dataset=(report or {}).get("dataset") or config.get("data", {}).get("dataset"),
                      accuracy=accuracy, accuracy_source=source, curves=curves, teachers=teachers,
                      examples=examples(rows_by_teacher, problems=list(train_problems)), sweep=sweep,
                      missing=missing)


def _curves(layout: RunLayout) -> list[TrainingCurve]:
    """The run's own curve, then each sweep trial's in folder order."""
    layouts = [("run", layout)] + [(p.name, layout.trial(p.name))
                                   for p in sorted((layout.sweep / "trials").glob("*")) if p.is_dir()]
    return [c for c in (training_curve(name, trial) for name, trial in layouts) if c is not None]


def _without_predictions(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A report entry for the page; reports written before intervals existed get theirs from the counts."""
    out = {k: v for k, v in entry.items() if k != "predictions"}
    out.setdefault("interval", list(wilson_interval(entry["correct"], entry["total"], LEVEL)))
    return out


def _job_name(layout: RunLayout) -> str | None:
    """The job's ``name:`` line of the saved resolved config (read as text: no config validation needed here)."""
    if not layout.config.is_file():
        return None
    match = re.search(r"^name:\s*(.+)$", layout.config.read_text(), re.MULTILINE)
    return match.group(1).strip().strip("'\"") if match else None
