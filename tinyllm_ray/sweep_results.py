"""The sweep's results table (pure; no Ray): one row per trial and scoring method, each accuracy with its 95 %
Wilson interval, and every trial compared with the answer-only baseline of the same student and data fraction on
the same problems (paired: Newcombe's interval of the difference, exact McNemar p; :mod:`tinyllm_ray.stats`).

Written as ``results.{json,csv,md,png}`` by :func:`write_results`; :mod:`tinyllm_ray.sweep` plans and runs the trials.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyllm_ray.layout import RunLayout
from tinyllm_ray.scoring import METHODS
from tinyllm_ray.stats import LEVEL, SIGNIFICANCE, paired_comparison

log = logging.getLogger("tinyllm_ray")

BASELINE_KINDS = ("answer_only", "single_teacher")
COMPARED_TO = "answer_only"
COLUMNS = ("name", "kind", "teachers", "alpha", "student", "data_fraction", "method", "accuracy", "interval_low",
           "interval_high", "correct", "total", "baseline", "difference", "difference_low", "difference_high",
           "only_trial_correct", "only_baseline_correct", "mcnemar_p", "significant", "optimizer_steps",
           "train_seconds", "error")
COMPARISON = ("baseline", "difference", "difference_low", "difference_high", "only_trial_correct",
              "only_baseline_correct", "mcnemar_p", "significant")


def number(value: float) -> str:
    return format(value, "g")


def student_entries(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The student's report entries by scoring method (reports without methods were ``generate``)."""
    return {entry.get("method", "generate"): entry for entry in report["results"] if entry["role"] == "student"}


def correctness(entry: Mapping[str, Any]) -> dict[str, bool]:
    """``{problem id: correct}`` of one report entry."""
    return {row["id"]: bool(row["correct"]) for row in entry["predictions"]}


def result_rows(trial: Any, alpha: Mapping[str, float], methods: Sequence[str], outcome: Mapping[str, Any] | None,
                error: str | None, entries: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per scoring method of a trial (``trial``: a :class:`tinyllm_ray.sweep.Trial`). ``outcome``: what
    the trial reported (training numbers, or an ``error``); ``entries``: its evaluation's student entries by method
    (:func:`student_entries`). The comparison columns stay empty until :func:`compare_to_baselines`."""
    outcome = outcome or {}
    error = error or outcome.get("error") or None
    rows = []
    for method in methods:
        entry = None if error else (entries or {}).get(method)
        missing = None if error or entry else f"the trial's evaluation report has no {method} result"
        interval = entry["interval"] if entry else [None, None]
        rows.append({"name": trial.name, "kind": trial.kind, "teachers": list(trial.teachers), "alpha": dict(alpha),
                     "student": trial.student, "data_fraction": trial.data_fraction, "method": method,
                     "accuracy": entry["accuracy"] if entry else None, "interval_low": interval[0],
                     "interval_high": interval[1], "correct": entry["correct"] if entry else None,
                     "total": entry["total"] if entry else None, **dict.fromkeys(COMPARISON),
                     "optimizer_steps": outcome.get("optimizer_steps"), "train_seconds": outcome.get("train_seconds"),
                     "error": error or missing})
    return rows


def _baseline_key(row: Mapping[str, Any]) -> tuple:
    return row["student"], row["data_fraction"], row["method"]


def compare_to_baselines(rows: Sequence[Mapping[str, Any]],
                         entries: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Rows with the paired comparison to their answer-only baseline (same student, data fraction and method) on
    the same problems: difference trial - baseline, its Newcombe interval, the problems only one of them gets
    right, the exact McNemar p and whether p < 0.05. ``entries``: trial name -> method -> report entry."""
    baselines = {_baseline_key(r): r for r in rows if r["kind"] == COMPARED_TO and r["accuracy"] is not None}
    out = []
    for row in rows:
        row = dict(row)
        base = baselines.get(_baseline_key(row))
        if base is not None and row["kind"] != COMPARED_TO and row["accuracy"] is not None:
            try:
                result = paired_comparison(correctness(entries[row["name"]][row["method"]]),
                                           correctness(entries[base["name"]][row["method"]]))
            except (KeyError, ValueError) as err:  # e.g. an evaluation of other problems: no paired comparison
                log.warning("sweep: no comparison of %s with %s: %s", row["name"], base["name"], err)
            else:
                row.update(baseline=base["name"], difference=result.difference, difference_low=result.low,
                           difference_high=result.high, only_trial_correct=result.better,
                           only_baseline_correct=result.worse, mcnemar_p=result.p_value,
                           significant=result.significant)
        out.append(row)
    return out


def _method_rank(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def ranked(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Per method (generate first), best accuracy first; failed trials last; ties by name."""
    return sorted(rows, key=lambda r: (_method_rank(r.get("method", "generate")), r["accuracy"] is None,
                                       -(r["accuracy"] or 0.0), r["name"]))


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The best multi-teacher trial and the baselines' accuracies (by the first method), failed trials, and the
    comparisons with the answer-only baseline that are significant at 5 %."""
    primary = rows[0].get("method", "generate") if rows else "generate"
    scored = [r for r in ranked(rows) if r["accuracy"] is not None and r.get("method", "generate") == primary]
    best = next((r for r in scored if r["kind"] == "tinyllm"), None)
    compared = [r for r in rows if r.get("mcnemar_p") is not None]
    return {"best": best["name"] if best else None, "method": primary,
            "baselines": {r["name"]: r["accuracy"] for r in scored if r["kind"] in BASELINE_KINDS},
            "failed": list(dict.fromkeys(r["name"] for r in rows if r["error"])),
            "comparisons": len(compared),
            "significant": [{"name": r["name"], "method": r["method"], "difference": r["difference"],
                             "mcnemar_p": r["mcnemar_p"]} for r in compared if r["significant"]]}


def alpha_text(alpha: Mapping[str, float]) -> str:
    return " ".join(f"{name}={number(weight)}" for name, weight in alpha.items())


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _points(value: float) -> str:
    return f"{value * 100:+.1f} pp"


def _interval(low: float | None, high: float | None, signed: bool = False) -> str:
    if low is None or high is None:
        return "-"
    return f"[{low * 100:+.1f}, {high * 100:+.1f}]" if signed else f"{low:.1%} - {high:.1%}"


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _difference_text(r: Mapping[str, Any]) -> str:
    return f"{_points(r['difference'])} {_interval(r['difference_low'], r['difference_high'], signed=True)}, " \
           f"p = {r['mcnemar_p']:.3g}"


def render_markdown(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    lines = [f"# Sweep: {title}", "",
             "| trial | kind | teachers | alpha | student | data | method | accuracy | 95% interval | correct / total "
             "| vs answer-only | difference 95% interval | McNemar p | steps | train s | error |",
             "|" + "---|" * 16]
    for r in ranked(rows):
        error = (r["error"] or "").replace("|", "/").replace("\n", " ")[:120]
        seconds = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        compared = r.get("mcnemar_p") is not None
        lines.append(
            f"| {r['name']} | {r['kind']} | {'+'.join(r['teachers']) or '-'} | {alpha_text(r['alpha']) or '-'}"
            f" | {r['student']} | {number(r['data_fraction'])} | {r.get('method', 'generate')} | "
            f"{_percent(r['accuracy'])} | {_interval(r.get('interval_low'), r.get('interval_high'))} | "
            f"{_dash(r['correct'])} / {_dash(r['total'])} | "
            f"{_points(r['difference']) + (' *' if r['significant'] else '') if compared else '-'} | "
            f"{_interval(r['difference_low'], r['difference_high'], signed=True) if compared else '-'} | "
            f"{format(r['mcnemar_p'], '.3g') if compared else '-'} | {_dash(r['optimizer_steps'])} | {seconds} "
            f"| {error} |")
    facts = summary(rows)
    by_name = {r["name"]: r for r in rows if r.get("method", "generate") == facts["method"]}
    lines.append("")
    if facts["best"]:
        lines.append(f"Best multi-teacher (TinyLLM) trial ({facts['method']}): **{facts['best']}**, "
                     f"accuracy {_percent(by_name[facts['best']]['accuracy'])}.")
    else:
        lines.append("No multi-teacher (TinyLLM) trial finished.")
    if facts["baselines"]:
        lines.append("Baselines: " + "; ".join(f"{name} {_percent(acc)}" for name, acc in facts["baselines"].items())
                     + ".")
    lines += ["", *_significance_text(rows, facts)]
    if facts["failed"]:
        lines.append(f"Failed trials ({len(facts['failed'])}): {', '.join(facts['failed'])}; see the error column.")
    return "\n".join(lines) + "\n"


def _significance_text(rows: Sequence[Mapping[str, Any]], facts: Mapping[str, Any]) -> list[str]:
    count = facts["comparisons"]
    if not count:
        return ["No trial could be compared with an answer-only baseline (none finished, or the sweep has none).", ""]
    methods = list(dict.fromkeys(r.get("method", "generate") for r in rows))
    label = (lambda r: f"{r['name']} ({r['method']})") if len(methods) > 1 else (lambda r: r["name"])
    compared = [r for r in ranked(rows) if r.get("mcnemar_p") is not None]
    significant = [r for r in compared if r["significant"]]
    out = [f"Paired comparisons with the answer-only baseline of the same student and data fraction, on the same "
           f"problems: accuracy difference (trial - baseline) with its {LEVEL:.0%} interval (Newcombe's hybrid "
           "score method) and the exact McNemar test on the problems only one of the two gets right. A difference "
           f"is called significant when McNemar's p < {SIGNIFICANCE:g}; with few such problems the exact test is "
           "stricter than the interval, which may then exclude 0 on its own."]
    if significant:
        out.append(f"Significant at {SIGNIFICANCE:.0%} ({len(significant)} of {count}, marked *): "
                   + "; ".join(f"**{label(r)}** {_difference_text(r)}" for r in significant) + ".")
    else:
        out.append(f"No difference from the answer-only baseline is significant at {SIGNIFICANCE:.0%} "
                   f"({count} comparison{'s' if count > 1 else ''}).")
    rest = [r for r in compared if not r["significant"]]
    if rest and significant:
        out.append("Not significant: " + "; ".join(f"{label(r)} {_difference_text(r)}" for r in rest) + ".")
    if count > 1:
        out.append(f"With {count} comparisons, about {count * SIGNIFICANCE:.2g} would reach p < {SIGNIFICANCE:g} by "
                   f"chance alone if no setting changed accuracy, so a single significant result may be luck; "
                   f"a Bonferroni threshold for all of them at once would be p < {SIGNIFICANCE / count:.2g}.")
    return [*out, ""]


def render_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**{k: r.get(k) for k in COLUMNS}, "teachers": "+".join(r["teachers"]),
                         "alpha": alpha_text(r["alpha"])})
    return out.getvalue()


KIND_COLOURS = {"tinyllm": "#1f77b4", "single_teacher": "#ff7f0e", "answer_only": "#7f7f7f"}


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """Horizontal bars of accuracy per trial (and method), best on top, coloured by kind, with the 95 % Wilson
    interval as error bars; * marks a significant difference from the answer-only baseline; failed trials marked."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state: safe in any process
    from matplotlib.patches import Patch

    ordered = list(reversed(ranked(rows)))
    several = len({r.get("method", "generate") for r in rows}) > 1
    labels = [f"{r['name']} [{r['method']}]" if several else r["name"] for r in ordered]
    accuracy = [r["accuracy"] or 0.0 for r in ordered]
    low = [a if r.get("interval_low") is None else r["interval_low"] for a, r in zip(accuracy, ordered)]
    high = [a if r.get("interval_high") is None else r["interval_high"] for a, r in zip(accuracy, ordered)]
    errors = [[a - lo for a, lo in zip(accuracy, low)], [hi - a for a, hi in zip(accuracy, high)]]
    fig = Figure(figsize=(8, 1.2 + 0.35 * len(ordered)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(labels, accuracy, xerr=errors, color=[KIND_COLOURS[r["kind"]] for r in ordered],
            error_kw={"ecolor": "#333333", "capsize": 3, "elinewidth": 1})
    for index, r in enumerate(ordered):
        text = "failed" if r["error"] else _percent(r["accuracy"]) + (" *" if r.get("significant") else "")
        ax.text(max(r.get("interval_high") or 0.0, accuracy[index]) + 0.01, index, text, va="center", fontsize=8)
    ax.set_xlim(0, 1.15)
    ax.set_xlabel(f"accuracy (held-out split), {LEVEL:.0%} Wilson interval; * differs from answer-only (p < 0.05)")
    ax.set_title(title)
    ax.legend(handles=[Patch(color=c, label=k) for k, c in KIND_COLOURS.items()], loc="lower right", fontsize=8)
    fig.savefig(path, dpi=100)


def write_results(layout: RunLayout, rows: Sequence[Mapping[str, Any]], title: str, **extra: Any) -> dict[str, Any]:
    """The sweep's results.json / .csv / .md / .png (``layout.sweep_results``); returns the JSON payload."""
    layout.sweep.mkdir(parents=True, exist_ok=True)
    payload = {"title": title, **summary(rows), **extra, "trials": list(rows)}
    layout.sweep_results("json").write_text(json.dumps(payload, indent=2))
    layout.sweep_results("csv").write_text(render_csv(rows))
    layout.sweep_results("md").write_text(render_markdown(rows, title))
    plot(rows, layout.sweep_results("png"), title)
    return payload
