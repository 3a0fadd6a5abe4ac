"""`tinyllm-ray sweep`: many distillation settings trained over the same cached rationales, one Ray Tune trial each.

The plan (pure, no Ray): the product of ``sweep.alpha`` x ``sweep.teacher_subsets`` x ``sweep.students`` x
``sweep.data_fractions`` (an empty axis keeps the job's own value), plus, with ``sweep.baselines``, one answer-only
fine-tune and each teacher alone per student and data fraction. Each trial is an ordinary job config
(:func:`trial_config`) trained and evaluated by the usual recipes into its own folder
(``<output_dir>/sweep/trials/<name>/``); problems and rationales stay shared, so nothing is regenerated.

The glue (:func:`run_sweep`): generate whatever rationales are missing, then a Ray Tune ``Tuner`` whose function
trainable is only a driver (0.1 CPU): it calls :func:`tinyllm_ray.train.train` (a Ray Train ``TorchTrainer.fit()``
with its own workers and placement group), then :func:`tinyllm_ray.evaluate.evaluate` on the resources training has
just released, and reports one row. How many trials run at once is ``sweep.max_concurrent_trials``, or what the
cluster's CPUs/GPUs/custom resources fit with one CPU kept free (:func:`default_concurrency`).
A failing trial is a row with an ``error``, never the end of the sweep. A rerun reuses every finished student and
evaluation, so an interrupted sweep resumes where it stopped.

Results: ``<output_dir>/sweep/results.{json,csv,md,png}`` and a manifest, written last.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from tinyllm_ray.errors import TinyLLMError
from tinyllm_ray.config import JobConfig, TrainingConfig, config_to_yaml, stable_hash
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.schemas import read_manifest, write_manifest

log = logging.getLogger("tinyllm_ray")

Kind = Literal["tinyllm", "single_teacher", "answer_only"]
BASELINE_KINDS = ("answer_only", "single_teacher")
# The trial function only drives Ray Train and evaluation; Tune needs some resource to place it.
DRIVER_CPUS = 0.1
# Logical CPUs left free for Ray Data ingest (with none, training hangs silently) and evaluation tasks.
RESERVED_CPUS = 1.0


class SweepError(TinyLLMError, ValueError):
    """A sweep cannot be planned or run as configured; the message names the setting to fix."""


# ---------------------------------------------------------------- the plan (pure)

@dataclass(frozen=True)
class Trial:
    """One point of the sweep. ``alpha`` None keeps the job's ``training.alpha``."""

    name: str
    kind: Kind
    teachers: tuple[str, ...]
    alpha: float | None
    student: str
    data_fraction: float


def _kind(teachers: Sequence[str]) -> Kind:
    return "answer_only" if not teachers else "single_teacher" if len(teachers) == 1 else "tinyllm"


def _number(value: float) -> str:
    return format(value, "g")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_.") or "x"


def student_labels(students: Sequence[str]) -> dict[str, str]:
    """Short, filesystem-safe label per student (last path part); clashing labels get a hash of the full spec."""
    short = {s: _safe(s.removeprefix("builtin:").rstrip("/").rsplit("/", 1)[-1]) for s in students}
    clashes = {label for label in short.values() if list(short.values()).count(label) > 1}
    return {s: f"{label}.{stable_hash(s)[:6]}" if label in clashes else label for s, label in short.items()}


def trial_name(kind: Kind, teachers: Sequence[str], alpha: float | None, student_label: str, fraction: float) -> str:
    parts = {"answer_only": ["answer-only"], "single_teacher": ["single", *teachers],
             "tinyllm": ["tinyllm", "+".join(teachers)]}[kind]
    if kind != "answer_only" and alpha is not None:
        parts.append(f"a{_number(alpha)}")
    return _safe("-".join([*parts, student_label, f"f{_number(fraction)}"]))


def plan_trials(config: JobConfig) -> list[Trial]:
    """Every trial of ``config.sweep``, in a stable order: the grid, then the baselines it lacks."""
    sweep = config.sweep
    order = [t.name for t in config.teachers]

    def canonical(subset: Sequence[str]) -> tuple[str, ...]:
        return tuple(sorted(set(subset), key=order.index))

    subsets = [canonical(s) for s in sweep.teacher_subsets] or [tuple(t.name for t in config.distilled_teachers())]
    alphas: list[float | None] = list(sweep.alpha) or [None]
    students = list(dict.fromkeys(sweep.students)) or [config.student.model]
    fractions = list(dict.fromkeys(sweep.data_fractions)) or [config.training.data_fraction]
    labels = student_labels(students)

    points: list[tuple[tuple[str, ...], float | None, str, float]] = []
    for student in students:
        for fraction in fractions:
            for subset in subsets:
                for alpha in alphas:
                    points.append((subset, alpha, student, fraction))
            if sweep.baselines:
                points.append(((), None, student, fraction))
                for teacher in sorted({t for s in subsets for t in s}, key=order.index):
                    for alpha in alphas:
                        points.append(((teacher,), alpha, student, fraction))
    trials: dict[tuple, Trial] = {}
    for subset, alpha, student, fraction in points:
        alpha = None if not subset else alpha  # answer-only: no rationale weight to vary
        key = (subset, alpha, student, fraction)
        if key not in trials:
            kind = _kind(subset)
            trials[key] = Trial(trial_name(kind, subset, alpha, labels[student], fraction), kind, subset, alpha,
                                student, fraction)
    names = [t.name for t in trials.values()]
    if len(set(names)) != len(names):  # pragma: no cover - names encode every field
        raise SweepError(f"trial names collide: {sorted(n for n in names if names.count(n) > 1)}")
    return list(trials.values())


def trial_config(config: JobConfig, trial: Trial) -> JobConfig:
    """The ordinary job config that trains ``trial``: its teachers, alpha, student and data fraction."""
    data = config.model_dump(mode="json")
    training = data["training"]
    training["teachers"] = list(trial.teachers)
    if trial.alpha is not None:
        training["alpha"] = {name: trial.alpha for name in trial.teachers}
    else:  # the job's own weights, only for the teachers this trial distils (keeps its fingerprint to itself)
        training["alpha"] = {name: w for name, w in training["alpha"].items() if name in trial.teachers}
    training["data_fraction"] = trial.data_fraction
    if trial.student != config.student.model:
        data["student"]["model"] = trial.student
        data["student"]["architecture"] = "auto"  # the job's setting describes its own student
    data["evaluation"]["teachers"] = False  # teachers are measured once by `evaluate`, not per trial
    data["sweep"] = {}
    try:
        return JobConfig.model_validate(data)
    except ValueError as err:
        raise SweepError(f"trial {trial.name}: invalid config: {err}") from None


def trial_alpha(config: JobConfig) -> dict[str, float]:
    """Rationale weight per distilled teacher of a (trial) config, as the student manifest records it."""
    return {t.name: config.alpha_for(t.name) for t in config.distilled_teachers()}


def teachers_needed(config: JobConfig, trials: Sequence[Trial]) -> list[str]:
    used = {name for trial in trials for name in trial.teachers}
    return [t.name for t in config.teachers if t.name in used]


# ---------------------------------------------------------------- resources (pure)

def trial_resources(training: TrainingConfig) -> dict[str, float]:
    """What the Tune trial itself holds: a sliver of CPU for the driver function. Ray Train places the workers in
    a placement group of its own, and evaluation runs after training has released them (see run_trial)."""
    return {"CPU": DRIVER_CPUS}


def trial_need(training: TrainingConfig) -> dict[str, float]:
    """Logical resources one trial holds while it trains: its driver plus its Ray Train workers."""
    need = dict(trial_resources(training))
    need["CPU"] += training.num_workers * training.cpus_per_worker
    if training.use_gpu:
        need["GPU"] = float(training.num_workers)
    for name, amount in training.custom_resources_per_worker.items():
        need[name] = need.get(name, 0.0) + training.num_workers * amount
    return need


def default_concurrency(cluster: Mapping[str, float], training: TrainingConfig,
                        reserved_cpus: float = RESERVED_CPUS) -> int:
    """Trials the cluster fits at once, keeping ``reserved_cpus`` free for Ray Data; never below 1."""
    available = {name: float(amount) for name, amount in cluster.items()}
    available["CPU"] = available.get("CPU", 0.0) - reserved_cpus
    fits = [int(available.get(name, 0.0) // amount) for name, amount in trial_need(training).items() if amount > 0]
    return max(1, min(fits, default=1))


# ---------------------------------------------------------------- results (pure)

COLUMNS = ("name", "kind", "teachers", "alpha", "student", "data_fraction", "accuracy", "correct", "total",
           "optimizer_steps", "train_seconds", "error")


def result_row(trial: Trial, config: JobConfig, outcome: Mapping[str, Any] | None, error: str | None) -> dict:
    outcome = outcome or {}
    return {"name": trial.name, "kind": trial.kind, "teachers": list(trial.teachers),
            "alpha": trial_alpha(trial_config(config, trial)), "student": trial.student,
            "data_fraction": trial.data_fraction, "accuracy": outcome.get("accuracy"),
            "correct": outcome.get("correct"), "total": outcome.get("total"),
            "optimizer_steps": outcome.get("optimizer_steps"), "train_seconds": outcome.get("train_seconds"),
            "error": error or outcome.get("error") or None}


def ranked(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Best accuracy first; failed trials last; ties by name."""
    return sorted(rows, key=lambda r: (r["accuracy"] is None, -(r["accuracy"] or 0.0), r["name"]))


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    scored = [r for r in ranked(rows) if r["accuracy"] is not None]
    best = next((r for r in scored if r["kind"] == "tinyllm"), None)
    return {"best": best["name"] if best else None,
            "baselines": {r["name"]: r["accuracy"] for r in scored if r["kind"] in BASELINE_KINDS},
            "failed": [r["name"] for r in rows if r["error"]]}


def _alpha_text(alpha: Mapping[str, float]) -> str:
    return " ".join(f"{name}={_number(weight)}" for name, weight in alpha.items())


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def render_markdown(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    lines = [f"# Sweep: {title}", "",
             "| trial | kind | teachers | alpha | student | data | accuracy | correct / total | steps | train s | error |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ranked(rows):
        error = (r["error"] or "").replace("|", "/").replace("\n", " ")[:120]
        seconds = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(f"| {r['name']} | {r['kind']} | {'+'.join(r['teachers']) or '-'} | {_alpha_text(r['alpha']) or '-'}"
                     f" | {r['student']} | {_number(r['data_fraction'])} | {_percent(r['accuracy'])} | "
                     f"{r['correct'] if r['correct'] is not None else '-'} / {r['total'] if r['total'] is not None else '-'}"
                     f" | {r['optimizer_steps'] if r['optimizer_steps'] is not None else '-'} | {seconds} | {error} |")
    facts = summary(rows)
    by_name = {r["name"]: r for r in rows}
    lines.append("")
    if facts["best"]:
        lines.append(f"Best multi-teacher (TinyLLM) trial: **{facts['best']}**, "
                     f"accuracy {_percent(by_name[facts['best']]['accuracy'])}.")
    else:
        lines.append("No multi-teacher (TinyLLM) trial finished.")
    if facts["baselines"]:
        lines.append("Baselines: " + "; ".join(f"{name} {_percent(acc)}" for name, acc in facts["baselines"].items())
                     + ".")
    if facts["failed"]:
        lines.append(f"Failed trials ({len(facts['failed'])}): {', '.join(facts['failed'])}; see the error column.")
    return "\n".join(lines) + "\n"


def render_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**{k: r[k] for k in COLUMNS}, "teachers": "+".join(r["teachers"]),
                         "alpha": _alpha_text(r["alpha"])})
    return out.getvalue()


KIND_COLOURS = {"tinyllm": "#1f77b4", "single_teacher": "#ff7f0e", "answer_only": "#7f7f7f"}


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """Horizontal bars of accuracy per trial, best on top, coloured by kind; failed trials marked."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state: safe in any process
    from matplotlib.patches import Patch

    ordered = list(reversed(ranked(rows)))
    fig = Figure(figsize=(8, 1.2 + 0.35 * len(ordered)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh([r["name"] for r in ordered], [r["accuracy"] or 0.0 for r in ordered],
            color=[KIND_COLOURS[r["kind"]] for r in ordered])
    for index, r in enumerate(ordered):
        ax.text((r["accuracy"] or 0.0) + 0.01, index, "failed" if r["error"] else _percent(r["accuracy"]),
                va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("accuracy (held-out split)")
    ax.set_title(title)
    ax.legend(handles=[Patch(color=c, label=k) for k, c in KIND_COLOURS.items()], loc="lower right", fontsize=8)
    fig.savefig(path, dpi=100)


def write_results(directory: Path, rows: Sequence[Mapping[str, Any]], title: str, **extra: Any) -> dict[str, Any]:
    """results.json / .csv / .md / .png in ``directory``; returns the JSON payload."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"title": title, **summary(rows), **extra, "trials": list(rows)}
    (directory / "results.json").write_text(json.dumps(payload, indent=2))
    (directory / "results.csv").write_text(render_csv(rows))
    (directory / "results.md").write_text(render_markdown(rows, title))
    plot(rows, directory / "results.png", title)
    return payload


# ---------------------------------------------------------------- one trial (runs in the Tune trial actor)

def _evaluation_key(config: JobConfig, student: Mapping[str, Any]) -> str:
    return stable_hash({"student": student["fingerprint"], "student_written": student["created_unix"],
                        "evaluation": config.evaluation.model_dump(mode="json"), "split": config.data.eval_split,
                        "task_prefix": config.prompts.task_prefix})


def run_trial(config: JobConfig, trial: Trial, force: bool = False) -> dict[str, Any]:
    """Train (or reuse) and evaluate (or reuse) one trial; any failure becomes ``{"error": ...}``."""
    from tinyllm_ray.evaluate import evaluate
    from tinyllm_ray.train import train

    layout = RunLayout.of(config.output_dir).trial(trial.name)
    try:
        job = trial_config(config, trial)
        layout.work.mkdir(parents=True, exist_ok=True)
        layout.config.write_text(config_to_yaml(job))
        student = train(job, force=force, layout=layout)
        key = _evaluation_key(job, student)
        marker = layout.work / "trial.json"
        previous = json.loads(marker.read_text()) if marker.is_file() else {}
        if not force and previous.get("evaluation_key") == key and read_manifest(layout.evaluation):
            result = previous["student"]
        else:
            report = evaluate(job, teachers=False, layout=layout)
            result = {k: v for k, v in report["results"][0].items() if k in ("accuracy", "correct", "total")}
            marker.write_text(json.dumps({"evaluation_key": key, "student": result}))
        return {**result, "optimizer_steps": student.get("optimizer_steps"), "train_seconds": student.get("seconds")}
    except Exception as err:  # noqa: BLE001 - one failing trial must not end the sweep
        log.exception("trial %s failed", trial.name)
        return {"error": f"{type(err).__name__}: {err}"[:2000]}


def _tune_trial(params: dict[str, Any], job: dict[str, Any], trials: dict[str, dict[str, Any]], force: bool) -> None:
    """Tune function trainable: one trial, one report."""
    from ray import tune

    spec = trials[params["trial"]]
    trial = Trial(**{**spec, "teachers": tuple(spec["teachers"])})
    outcome = run_trial(JobConfig.model_validate(job), trial, force)
    tune.report({k: v for k, v in outcome.items() if v is not None})


def _trial_dirname(trial) -> str:
    return trial.config["trial"]


# ---------------------------------------------------------------- the sweep

def run_sweep(config: JobConfig, force: bool = False) -> dict[str, Any]:
    """Generate missing rationales, train and evaluate every planned trial with Ray Tune, write the results."""
    import ray
    from ray import tune

    from tinyllm_ray.generate import generate
    from tinyllm_ray.models import resolve_model

    start = time.time()
    layout = RunLayout.of(config.output_dir)
    # Trials see the same paths as every other stage: an absolute output_dir, and no chdir into Tune's trial folder
    # (the driver's value of this variable is passed to the trial actors).
    config = config.model_copy(update={"output_dir": str(layout.root)})
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    trials = plan_trials(config)
    for trial in trials:
        trial_config(config, trial)  # every trial's config is valid before anything runs
    for student in dict.fromkeys(t.student for t in trials):
        resolve_model(student)  # fail before generating on a bad student; build builtins once, not in every trial
    (layout.sweep / "manifest.json").unlink(missing_ok=True)
    generate(config, force=force, only=teachers_needed(config, trials))
    concurrency = config.sweep.max_concurrent_trials or default_concurrency(ray.cluster_resources(), config.training)
    log.info("sweep: %d trials, up to %d at once", len(trials), concurrency)

    trainable = tune.with_parameters(_tune_trial, job=config.model_dump(mode="json"),
                                     trials={t.name: asdict(t) for t in trials}, force=force)
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(config.training)),
        param_space={"trial": tune.grid_search([t.name for t in trials])},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=False,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name="tune", storage_path=str(layout.sweep), verbose=1),
    )
    grid = tuner.fit()
    outcomes: dict[str, tuple[dict[str, Any], str | None]] = {}
    for result in grid:
        name = (result.config or {}).get("trial")
        error = f"{type(result.error).__name__}: {result.error}"[:2000] if result.error else None
        outcomes[name] = (dict(result.metrics or {}), error)
    rows = []
    for trial in trials:
        metrics, error = outcomes.get(trial.name, ({}, "Tune did not run this trial"))
        rows.append(result_row(trial, config, metrics, error))
    payload = write_results(layout.sweep, rows, f"{config.name} ({config.data.dataset}, split {config.data.eval_split})",
                            max_concurrent_trials=concurrency, seconds=round(time.time() - start, 2))
    write_manifest(layout.sweep, fingerprint=stable_hash([asdict(t) for t in trials]), trials=[t.name for t in trials],
                   failed=payload["failed"], best=payload["best"], max_concurrent_trials=concurrency,
                   seconds=payload["seconds"])
    return payload
