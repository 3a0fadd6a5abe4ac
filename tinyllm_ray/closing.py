"""What the end of every command prints: what was made and where, the accuracy with its intervals, and what to run
next. Pure text from the run layout and the stage's own result (manifests, the evaluation report, the sweep's
results); nothing here reads the disk, so each summary says exactly what that command returned."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyllm_ray.layout import RunLayout
from tinyllm_ray.stats import LEVEL
from tinyllm_ray.sweep_results import ranked

RULE = "-" * 60


def aligned(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A plain-text table with padded columns: readable in a terminal and in `ray job logs` alike."""
    cells = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]


def _interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"{low:.1%} - {high:.1%}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def accuracy_lines(report: Mapping[str, Any]) -> list[str]:
    """The evaluation report's accuracies, each with its Wilson interval (``report["level"]``, 95 %)."""
    level = report.get("level", LEVEL)
    # no role column: the student's name says it; 80 columns hold the rest (report.md has every column)
    rows = [(e["name"], e.get("method", "generate"), _percent(e["accuracy"]), _interval(*e["interval"]),
             f"{e['correct']}/{e['total']}") for e in report["results"]]
    title = f"Accuracy on {report.get('dataset', '?')} split {report.get('split', '?')}:"
    return [title, *aligned(("model", "method", "accuracy", f"{level:.0%} interval", "correct"), rows)]


def sweep_lines(results: Mapping[str, Any]) -> list[str]:
    """The sweep's trials, best first per method, with intervals and the difference to the answer-only baseline."""
    rows = []
    for r in ranked(results.get("trials", [])):
        compared = r.get("mcnemar_p") is not None
        difference = (f"{r['difference'] * 100:+.1f} pp, p={r['mcnemar_p']:.2g}" + (" *" if r["significant"] else "")
                      if compared else "-")
        rows.append((r["name"], r.get("method", "generate"), "failed" if r["error"] else _percent(r["accuracy"]),
                     _interval(r.get("interval_low"), r.get("interval_high")), difference))
    lines = [f"Sweep: {results.get('title', '')}",
             *aligned(("trial", "method", "accuracy", f"{LEVEL:.0%} interval", "vs answer-only"), rows)]
    if results.get("best"):
        lines.append(f"Best multi-teacher trial: {results['best']} (* : McNemar p < 0.05 against answer-only)")
    return lines


def _command(*words: str | Path) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def _block(title: str, artifacts: Sequence[tuple[str, Path]], body: Sequence[str], next_steps: Sequence[str]) -> str:
    """One closing block: a title, the artifacts written (label: path), the body, and the next commands."""
    width = max((len(label) for label, _ in artifacts), default=0)
    lines = [RULE, title, "", "Artifacts:"] + [f"  {label.ljust(width)}  {path}" for label, path in artifacts]
    if body:
        lines += ["", *body]
    lines += ["", "Next:"] + [f"  {step}" for step in next_steps]
    return "\n".join(lines) + "\n"


def _inspect(layout: RunLayout) -> str:
    return _command("tinyllm-ray", "inspect", layout.root) + "    # what is on disk, per artifact"


def _report(layout: RunLayout) -> str:
    return _command("tinyllm-ray", "report", layout.root) + "    # report.html: charts, accuracy, examples"


def _tensorboard(folder: Path) -> str:
    return _command("tensorboard", "--logdir", folder)


def generate_summary(layout: RunLayout, manifests: Mapping[str, Mapping[str, Any]], config: str) -> str:
    rows = [(name, m["counts"]["rows"], m["counts"]["errors"], m["counts"].get("flagged", "-"),
             m["counts"]["generated_tokens"], f"{m.get('seconds', 0):.0f}") for name, m in manifests.items()]
    body = aligned(("teacher", "rationales", "errors", "flagged", "generated tokens", "seconds"), rows)
    artifacts = [("problems", layout.problems)] + [(f"rationales {n}", layout.teacher_dir(n)) for n in manifests]
    return _block(f"generate: {len(manifests)} teacher(s) done", artifacts, body, [
        _command("tinyllm-ray", "train", config, "-o", layout.root) + "    # distil the student", _inspect(layout),
        _tensorboard(layout.root / "metrics" / "generate")])


def _last_losses(manifest: Mapping[str, Any]) -> list[str]:
    losses = manifest.get("losses") or []
    if not losses:
        return []
    last = losses[-1]
    tasks = " ".join(f"{task}={value:.3f}" for task, value in last.get("task_losses", {}).items())
    return [f"Last logged loss (step {last['step']}): {last['loss']:.4f}  {tasks}".rstrip()]


def train_summary(layout: RunLayout, manifest: Mapping[str, Any], config: str) -> str:
    teachers = ", ".join(manifest.get("teachers") or []) or "none (answer only)"
    body = [f"{manifest.get('optimizer_steps')} optimizer steps, {manifest.get('train_tokens')} tokens, "
            f"{manifest.get('seconds', 0):.0f} s; distilled from {teachers}", *_last_losses(manifest)]
    return _block("train: student ready", [("student", layout.student), ("metrics", layout.metrics / "train")],
                  body, [_command("tinyllm-ray", "evaluate", config, "-o", layout.root) + "    # its accuracy",
                         _tensorboard(layout.metrics / "train"), _inspect(layout)])


def evaluate_summary(layout: RunLayout, report: Mapping[str, Any], config: str) -> str:
    return _block("evaluate: done", [("report", layout.report_json), ("table", layout.report_md)],
                  accuracy_lines(report), [_report(layout), _inspect(layout), _sweep(layout, config)])


def _sweep(layout: RunLayout, config: str) -> str:
    return _command("tinyllm-ray", "sweep", config, "-o", layout.root) + "    # alpha, teacher subsets, baselines"


def run_summary(layout: RunLayout, report: Mapping[str, Any], config: str, page: Path | None) -> str:
    artifacts = [("rationales", layout.rationales), ("student", layout.student), ("evaluation", layout.report_json)]
    artifacts += [("report", page)] if page else []
    next_steps = ([] if page else [_report(layout)]) + [
        _inspect(layout), _tensorboard(layout.root / "metrics"), _sweep(layout, config)]
    return _block("run: generate -> train -> evaluate done", artifacts, accuracy_lines(report), next_steps)


def sweep_summary(layout: RunLayout, results: Mapping[str, Any], page: Path | None) -> str:
    artifacts = [("results", layout.sweep_results("md")), ("plot", layout.sweep_results("png")),
                 ("trials", layout.sweep / "trials")] + ([("report", page)] if page else [])
    body = sweep_lines(results)
    if results.get("failed"):
        body.append(f"Failed trials: {', '.join(results['failed'])} (their error is in results.md)")
    next_steps = ([] if page else [_report(layout)]) + [
        _inspect(layout), _tensorboard(layout.sweep / "trials") + "    # every trial's training curves"]
    return _block(f"sweep: {len(set(r['name'] for r in results.get('trials', [])))} trial(s)", artifacts, body,
                  next_steps)
