"""The report's charts as PNG bytes: matplotlib ``Figure`` objects on the Agg canvas (no pyplot state, no display),
drawn from :mod:`tinyllm_ray.report_data`'s plain data."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tinyllm_ray.report_data import TOTAL_LOSS, TeacherStats, TrainingCurve
from tinyllm_ray.stats import LEVEL

MAX_TRIAL_PANELS = 12  # a larger sweep shows its first trials' curves; the table still lists every trial
AGREEMENT_COLOURS = {"agrees": "#2ca02c", "contradicts": "#d62728", "no_answer": "#bbbbbb"}


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # lazy: the CLI's --help stays instant

    return Figure(figsize=(width, height), layout="constrained")


def loss_chart(curves: Sequence[TrainingCurve]) -> bytes:
    """Loss per task over optimizer steps: one panel per run (per sweep trial), the total objective dashed."""
    shown = list(curves)[:MAX_TRIAL_PANELS]
    columns = 1 if len(shown) == 1 else 2
    rows = math.ceil(len(shown) / columns)
    from matplotlib.ticker import MaxNLocator

    fig = _figure(8 if columns == 1 else 11, 3.4 * rows)
    axes = fig.subplots(rows, columns, squeeze=False)
    tasks = list(dict.fromkeys(task for curve in shown for task in curve.losses if task != TOTAL_LOSS))
    # one colour per task in every panel
    colours = {task: f"C{index % 10}" for index, task in enumerate(tasks)} | {TOTAL_LOSS: "#333333"}
    for index, ax in enumerate(axes.flat):
        if index >= len(shown):
            ax.set_visible(False)
            continue
        curve = shown[index]
        for task, points in curve.losses.items():
            steps, values = zip(*points)
            total = task == TOTAL_LOSS
            ax.plot(steps, values, linestyle="--" if total else "-", color=colours[task],
                    marker="." if len(points) < 30 else None, label=task)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(curve.name, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (token cross-entropy)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _png(fig)


def length_chart(teachers: Sequence[TeacherStats]) -> bytes:
    """Rationale length distribution (words) per teacher, as overlaid step histograms on common bins."""
    fig = _figure(8, 3.6)
    ax = fig.add_subplot()
    every = sorted(n for t in teachers for n in t.word_counts)
    # up to the 99th percentile: a few run-on texts would squeeze the rest into one bin; they land in the last
    top = max(every[int(0.99 * (len(every) - 1))] if every else 1, 1)
    for teacher in teachers:
        if teacher.word_counts:
            ax.hist([min(n, top) for n in teacher.word_counts], bins=min(40, top), range=(0, top), histtype="step",
                    linewidth=1.5,
                    label=f"{teacher.name} (median {sorted(teacher.word_counts)[len(teacher.word_counts) // 2]})")
    ax.set_xlabel(f"rationale length (words; the last bin holds all of {top} and more)")
    ax.set_ylabel("rationales")
    if any(t.word_counts for t in teachers):  # every row failed: no histogram, no legend
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def agreement_chart(teachers: Sequence[TeacherStats]) -> bytes:
    """Per teacher, the share of rationales ending on the gold option, on another, or on none (stacked bars)."""
    fig = _figure(8, 1.5 + 0.5 * len(teachers))
    ax = fig.add_subplot()
    names = [t.name for t in teachers]
    left = [0.0] * len(teachers)
    for key, colour in AGREEMENT_COLOURS.items():
        shares = [t.agreement[key] / max(sum(t.agreement.values()), 1) for t in teachers]
        ax.barh(names, shares, left=left, color=colour, label=key.replace("_", " "))
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 1)
    ax.set_xlabel('share of rationales by the option their last "the answer is (x)" names')
    fig.legend(loc="outside upper center", ncols=len(AGREEMENT_COLOURS), fontsize=8)  # never over the bars
    return _png(fig)


def accuracy_chart(entries: Sequence[Mapping[str, Any]]) -> bytes:
    """Accuracy of the student (per method) and each teacher, with the Wilson interval as error bars."""
    fig = _figure(8, 1.2 + 0.45 * len(entries))
    ax = fig.add_subplot()
    ordered = list(reversed(entries))  # barh draws bottom-up: keep the report's order top-down
    labels = [f"{e['name']} [{e.get('method', 'generate')}]" for e in ordered]
    accuracy = [e["accuracy"] for e in ordered]
    errors = [[a - e["interval"][0] for a, e in zip(accuracy, ordered)],
              [e["interval"][1] - a for a, e in zip(accuracy, ordered)]]
    colours = ["#1f77b4" if e["role"] == "student" else "#ff7f0e" for e in ordered]
    ax.barh(labels, accuracy, xerr=errors, color=colours, error_kw={"ecolor": "#333333", "capsize": 3})
    for index, entry in enumerate(ordered):
        ax.text(entry["interval"][1] + 0.01, index, f"{entry['accuracy']:.1%}", va="center", fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel(f"accuracy (held-out split), {LEVEL:.0%} Wilson interval; blue: student, orange: teachers")
    return _png(fig)


def sweep_chart(rows: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """The sweep's own results plot (``sweep_results.plot``), redrawn from results.json."""
    from tinyllm_ray.sweep_results import plot

    buffer = io.BytesIO()
    plot(rows, buffer, title)
    return buffer.getvalue()
