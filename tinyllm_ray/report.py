"""`tinyllm-ray report RUN_DIR`: one self-contained ``report.html`` for a run or a sweep (charts embedded as PNG data
URIs, no script, no network), from :func:`tinyllm_ray.report_data.gather` and :mod:`tinyllm_ray.report_charts`.

Sections (each an element with its id): ``overview``, ``accuracy``, ``sweep`` (a sweep only), ``training``,
``teachers``, ``examples``."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyllm_ray import report_charts
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.report_data import ReportData, TeacherStats, gather
from tinyllm_ray.stats import LEVEL
from tinyllm_ray.sweep_results import alpha_text, ranked

SECTIONS = ("overview", "accuracy", "sweep", "training", "teachers", "examples")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .note { color: #666; font-size: 0.9em; } code { background: #f4f4f4; padding: 0 0.2em; }
.side { display: grid; grid-template-columns: repeat(auto-fit, minmax(280px, 1fr)); gap: 0.8em; }
.side div { border: 1px solid #ddd; padding: 0.6em; background: #fafafa; white-space: pre-wrap; font-size: 0.88em; }
.side h4 { margin: 0 0 0.4em 0; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers) if any(headers) else ""  # a key-value table: no header
    body = "".join("<tr>" + "".join(f'<td class="num">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{f'<thead><tr>{head}</tr></thead>' if head else ''}<tbody>{body}</tbody></table>"


def _section(section_id: str, title: str, *parts: str) -> str:
    return f'<section id="{section_id}"><h2>{_e(title)}</h2>{"".join(parts)}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"{low:.1%} - {high:.1%}"


def overview_section(data: ReportData) -> str:
    facts = [("job", data.job or "-"), ("dataset", data.dataset or "-"), ("run folder", str(data.root)),
             ("kind", "sweep" if data.is_sweep else "sweep (no results yet)" if data.curves and
              data.curves[0].name != "run" else "run"), ("teachers", ", ".join(t.name for t in data.teachers))]
    missing = "".join(f"<li>{_e(m)}</li>" for m in data.missing)
    return _section("overview", "Overview", _table(("", ""), facts),
                    f"<p>Not in this report:</p><ul>{missing}</ul>" if missing else "")


def accuracy_section(data: ReportData) -> str:
    if not data.accuracy:
        why = "the sweep's trials are in the Sweep section; teachers were not evaluated" if data.is_sweep \
            else "no evaluation report yet: run `tinyllm-ray evaluate` (a sweep: its results come when it ends)"
        return _section("accuracy", "Accuracy", _note(why))
    rows = [(e["name"], e["role"], e.get("method", "generate"), _percent(e["accuracy"]),
             _interval(*e["interval"]), f"{e['correct']} / {e['total']}") for e in data.accuracy]
    return _section(
        "accuracy", "Accuracy on the held-out split",
        _image(report_charts.accuracy_chart(data.accuracy), "accuracy with intervals"),
        _table(("model", "role", "method", "accuracy", f"{LEVEL:.0%} interval", "correct / total"), rows, (3, 5)),
        _note(f"From {data.accuracy_source}. Intervals: Wilson score, {LEVEL:.0%}. Teachers answer without the gold "
              "answer; their answer is the option it names."))


def _difference(row: Mapping[str, Any]) -> str:
    if row.get("mcnemar_p") is None:
        return "-"
    return (f"{row['difference'] * 100:+.1f} pp [{row['difference_low'] * 100:+.1f}, "
            f"{row['difference_high'] * 100:+.1f}], p = {row['mcnemar_p']:.3g}" + (" *" if row["significant"] else ""))


def sweep_section(data: ReportData) -> str:
    sweep = data.sweep or {}
    rows = sweep.get("trials", [])
    if not rows:
        return _section("sweep", "Sweep", _note("results.json lists no trials"))
    table = [(r["name"], r["kind"], "+".join(r["teachers"]) or "-", alpha_text(r["alpha"]) or "-", r["student"],
              r["data_fraction"], r.get("method", "generate"), _percent(r["accuracy"]),
              _interval(r.get("interval_low"), r.get("interval_high")), _difference(r),
              "-" if r["optimizer_steps"] is None else r["optimizer_steps"], (r["error"] or "")[:200])
             for r in ranked(rows)]
    best = f"Best multi-teacher trial: {sweep['best']}." if sweep.get("best") else "No multi-teacher trial finished."
    return _section(
        "sweep", f"Sweep: {sweep.get('title', '')}", _image(report_charts.sweep_chart(rows, sweep.get("title", "")),
                                                            "sweep trials"),
        _table(("trial", "kind", "teachers", "alpha", "student", "data", "method", "accuracy",
                f"{LEVEL:.0%} interval", "vs answer-only (95% interval, McNemar p)", "steps", "error"), table, (7,)),
        _note(f"{best} * marks a difference from the answer-only baseline with McNemar p < 0.05. "
              "The full table with every column is sweep/results.md."))


def training_section(data: ReportData) -> str:
    if not data.curves:
        return _section("training", "Training", _note("no training losses yet: no finished student and no "
                                                      "TensorBoard events under metrics/train"))
    sources = "; ".join(f"{c.name}: {c.source}" for c in data.curves)
    final = [(c.name, task, points[-1][0], f"{points[-1][1]:.4f}") for c in data.curves
             for task, points in c.losses.items()]
    return _section("training", "Training loss per task",
                    _image(report_charts.loss_chart(data.curves), "training loss per task"),
                    _table(("run", "task", "last logged step", "loss"), final, (2, 3)),
                    _note(f"Sources: {sources}. 'total' is the weighted objective L = L_answer + sum alpha_m "
                          "L_rationale_m; the student manifest logs rank 0's losses every training.log_every_steps."))


def _teacher_row(t: TeacherStats) -> tuple:
    rate = "-" if not t.seconds or not t.generated_tokens else f"{t.generated_tokens / t.seconds:.0f}"
    median = sorted(t.word_counts)[len(t.word_counts) // 2] if t.word_counts else "-"
    return (t.name, t.model or "-", t.kind or "-", "yes" if t.complete else "no", t.rows, t.errors, median,
            "-" if t.prompt_tokens is None else t.prompt_tokens,
            "-" if t.generated_tokens is None else t.generated_tokens, "-" if t.seconds is None else t.seconds, rate)


def teachers_section(data: ReportData) -> str:
    if not data.teachers:
        return _section("teachers", "Teachers", _note("no rationales yet: run `tinyllm-ray generate`"))
    stats = _table(("teacher", "model", "kind", "complete", "rows", "errors", "median words", "prompt tokens",
                    "generated tokens", "seconds", "tokens/s"), [_teacher_row(t) for t in data.teachers],
                   (4, 5, 6, 7, 8, 9, 10))
    flag_names = list(data.teachers[0].flags)
    flags = _table(("teacher", *flag_names), [(t.name, *(t.flags[f] for f in flag_names)) for t in data.teachers],
                   tuple(range(1, len(flag_names) + 1)))
    agreement = _table(("teacher", "ends on the gold option", "ends on another option", "names no option"),
                       [(t.name, t.agreement["agrees"], t.agreement["contradicts"], t.agreement["no_answer"])
                        for t in data.teachers], (1, 2, 3))
    return _section(
        "teachers", "Teachers' rationales (train split)", stats,
        _note("Imported teachers ran no engine here: no tokens counted. Time is the generation stage's wall clock."),
        "<h3>Rationale length</h3>", _image(report_charts.length_chart(data.teachers), "rationale lengths"),
        "<h3>Quality flags</h3>", flags,
        _note("empty, degenerate (mostly repeats itself), truncated (hit the token limit), contradicting (ends on "
              "another option than the gold one); flagged: any flag. Rules: tinyllm_ray/quality.py."),
        "<h3>Agreement with the gold answer</h3>", _image(report_charts.agreement_chart(data.teachers), "agreement"),
        agreement)


def examples_section(data: ReportData) -> str:
    if not data.examples:
        return _section("examples", "Example rationales", _note("no question has a rationale from every teacher"))
    parts = []
    for example in data.examples:
        options = "".join(f"<li>{_e(c)}</li>" for c in example["choices"])
        cells = "".join(f"<div><h4>{_e(t)}</h4>{_e(text)}</div>" for t, text in example["rationales"].items())
        parts.append(f"<h3>{_e(example['id'])}</h3><p>{_e(example['question'])}</p><ol type=\"a\">{options}</ol>"
                     f"<p>Gold answer: <b>{_e(example['answer'])}</b></p><div class=\"side\">{cells}</div>")
    return _section("examples", "Example rationales, side by side", *parts)


def render_html(data: ReportData) -> str:
    sections = [overview_section(data), accuracy_section(data)] + ([sweep_section(data)] if data.is_sweep else []) \
        + [training_section(data), teachers_section(data), examples_section(data)]
    title = f"tinyllm-ray report: {data.job or data.root.name}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>{''.join(sections)}</body></html>\n")


def report_path(path: str | Path) -> Path:
    return RunLayout.of(str(path)).report_html


def write_report(path: str | Path) -> Path:
    """Gather, render and write ``<run>/report.html``; returns its path."""
    target = report_path(path)
    target.write_text(render_html(gather(path)), encoding="utf-8")
    return target
