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

Results (:mod:`tinyllm_ray.sweep_results`): one row per trial and scoring method, each accuracy with its 95 % Wilson
interval and, for every trial, the paired difference to the answer-only baseline of the same student and data
fraction on the same problems (Newcombe's interval, exact McNemar p), read from the trials' evaluation reports;
``<output_dir>/sweep/results.{json,csv,md,png}`` and a manifest, written last.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping, Sequence

from tinyllm_ray import sweep_results
from tinyllm_ray.config import JobConfig, SweepConfig, TrainingConfig, config_to_yaml, stable_hash
from tinyllm_ray.console import current as console
from tinyllm_ray.errors import TinyLLMError
from tinyllm_ray.layout import MANIFEST, RunLayout
from tinyllm_ray.progress import ProgressDisplay
from tinyllm_ray.schemas import write_manifest
from tinyllm_ray.scoring import methods_of
from tinyllm_ray.sweep_results import (  # noqa: F401 - the results API, also importable from here
    BASELINE_KINDS, COLUMNS, compare_to_baselines, plot, ranked, render_csv, render_markdown, student_entries,
    summary, write_results,
)

log = logging.getLogger("tinyllm_ray")

Kind = Literal["tinyllm", "single_teacher", "answer_only"]
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


_number = sweep_results.number


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

def trial_resources(sweep: SweepConfig) -> dict[str, float]:
    """What the Tune trial itself holds: ``sweep.trial_resources`` (a custom resource that keeps the driver off GPU
    nodes), else a sliver of CPU. Ray Train places the workers in a placement group of its own, and evaluation runs
    after training has released them (see run_trial)."""
    return dict(sweep.trial_resources) or {"CPU": DRIVER_CPUS}


def trial_need(training: TrainingConfig, sweep: SweepConfig) -> dict[str, float]:
    """Logical resources one trial holds while it trains: its driver plus its Ray Train workers."""
    need = {"CPU": 0.0, **trial_resources(sweep)}
    need["CPU"] += training.num_workers * training.cpus_per_worker
    if training.use_gpu:
        need["GPU"] = float(training.num_workers)
    for name, amount in training.custom_resources_per_worker.items():
        need[name] = need.get(name, 0.0) + training.num_workers * amount
    return need


def default_concurrency(cluster: Mapping[str, float], training: TrainingConfig, sweep: SweepConfig,
                        reserved_cpus: float = RESERVED_CPUS) -> int:
    """Trials the cluster fits at once, keeping ``reserved_cpus`` free for Ray Data; never below 1."""
    available = {name: float(amount) for name, amount in cluster.items()}
    available["CPU"] = available.get("CPU", 0.0) - reserved_cpus
    fits = [int(available.get(name, 0.0) // amount) for name, amount in trial_need(training, sweep).items()
            if amount > 0]
    return max(1, min(fits, default=1))


# ---------------------------------------------------------------- results (the pure part: sweep_results.py)

def result_rows(trial: Trial, config: JobConfig, outcome: Mapping[str, Any] | None, error: str | None,
                entries: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """A trial's rows, one per scoring method of ``config.evaluation.method`` (:func:`sweep_results.result_rows`)."""
    return sweep_results.result_rows(trial, trial_alpha(trial_config(config, trial)),
                                     methods_of(config.evaluation.method), outcome, error, entries)


# ---------------------------------------------------------------- one trial (runs in the Tune trial actor)

def run_trial(config: JobConfig, trial: Trial, force: bool = False) -> dict[str, Any]:
    """Train (or reuse) and evaluate (or reuse) one trial; any failure becomes ``{"error": ...}``. The evaluation
    is reused when its manifest records this student's evaluation fingerprint (:func:`artifacts.reusable`)."""
    from tinyllm_ray.artifacts import reusable
    from tinyllm_ray.evaluate import evaluate, evaluation_fingerprint
    from tinyllm_ray.train import train

    layout = RunLayout.of(config.output_dir).trial(trial.name)
    try:
        job = trial_config(config, trial)
        layout.work.mkdir(parents=True, exist_ok=True)
        layout.config.write_text(config_to_yaml(job))
        student = train(job, force=force, layout=layout)
        key = evaluation_fingerprint(job, layout, student)
        manifest = reusable(layout.evaluation, key, force=force)
        # an evaluation written before it recorded a fingerprint is redone (reusable keeps unfingerprinted ones)
        if manifest is not None and manifest.get("fingerprint") == key and layout.report_json.is_file():
            log.info("trial %s: reusing its evaluation", trial.name)
            report = json.loads(layout.report_json.read_text())
        else:
            report = evaluate(job, teachers=False, layout=layout)
        first = report["results"][0]
        return {"accuracy": first["accuracy"], "correct": first["correct"], "total": first["total"],
                "optimizer_steps": student.get("optimizer_steps"), "train_seconds": student.get("seconds")}
    except Exception as err:  # noqa: BLE001 - one failing trial must not end the sweep
        log.exception("trial %s failed", trial.name)
        return {"error": f"{type(err).__name__}: {err}"[:2000]}


def trial_entries(config: JobConfig, trial: Trial) -> dict[str, Mapping[str, Any]] | None:
    """The student's entries (by method) of a trial's evaluation report, or None when it has none."""
    path = RunLayout.of(config.output_dir).trial(trial.name).report_json
    return student_entries(json.loads(path.read_text())) if path.is_file() else None


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

    from tinyllm_ray.cluster_fit import trial_driver_request
    from tinyllm_ray.cluster_state import require_fit, require_job_fit
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
    (layout.sweep / MANIFEST).unlink(missing_ok=True)
    needed = teachers_needed(config, trials)
    # every trial trains with the job's resources: a misfit stops here, not in each trial after the generation
    require_job_fit(config, [t for t in config.teachers if t.name in needed], training=True)
    require_fit([trial_driver_request(trial_resources(config.sweep))])
    generate(config, force=force, only=needed)
    concurrency = config.sweep.max_concurrent_trials or default_concurrency(ray.cluster_resources(), config.training,
                                                                            config.sweep)
    log.info("sweep: %d trials, up to %d at once", len(trials), concurrency)
    console().stage_started("sweep", f"{len(trials)} trials, up to {concurrency} at once -> {layout.sweep}")
    display = console().progress("sweep", len(trials), "trials")

    trainable = tune.with_parameters(_tune_trial, job=config.model_dump(mode="json"),
                                     trials={t.name: asdict(t) for t in trials}, force=force)
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(config.sweep)),
        param_space={"trial": tune.grid_search([t.name for t in trials])},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=False,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name="tune", storage_path=str(layout.sweep), verbose=1,
                                  callbacks=[_trial_progress(display)]),
    )
    try:
        grid = tuner.fit()
    finally:
        display.close()
    outcomes: dict[str, tuple[dict[str, Any], str | None]] = {}
    for result in grid:
        name = (result.config or {}).get("trial")
        error = f"{type(result.error).__name__}: {result.error}"[:2000] if result.error else None
        outcomes[name] = (dict(result.metrics or {}), error)
    rows, entries = [], {}
    for trial in trials:
        metrics, error = outcomes.get(trial.name, ({}, "Tune did not run this trial"))
        found = None if error or metrics.get("error") else trial_entries(config, trial)
        if found is not None:
            entries[trial.name] = found
        rows += result_rows(trial, config, metrics, error, found)
    rows = compare_to_baselines(rows, entries)
    payload = write_results(layout, rows, f"{config.name} ({config.data.dataset}, split {config.data.eval_split})",
                            max_concurrent_trials=concurrency, seconds=round(time.time() - start, 2))
    write_manifest(layout.sweep, fingerprint=stable_hash([asdict(t) for t in trials]), trials=[t.name for t in trials],
                   failed=payload["failed"], best=payload["best"], significant=payload["significant"],
                   max_concurrent_trials=concurrency,
                   seconds=payload["seconds"])
    failed = f", {len(payload['failed'])} failed" if payload["failed"] else ""
    console().stage_finished("sweep", f"{len(trials)} trials{failed} -> {layout.sweep_results('md')}")
    return payload


def _trial_progress(display: ProgressDisplay):
    """A Tune callback (it runs in the driver) that moves the sweep's display as trials start and end.

    Tune pickles its run config, callbacks included, into the experiment folder: the display (which holds the
    console's stream) is left out of that copy, so a restored callback shows nothing rather than failing to pickle.
    """
    from ray.tune import Callback

    class TrialProgress(Callback):
        def __init__(self, display: ProgressDisplay | None):
            self.display = display
            self.running: list[str] = []
            self.ended = self.failed = 0

        def __getstate__(self) -> dict[str, Any]:
            return {**self.__dict__, "display": None}

        def _show(self) -> None:
            if self.display is not None:
                running = f"running {', '.join(self.running)}"[:60] if self.running else ""
                self.display.update(self.ended, running=running, failed=f"{self.failed} failed" if self.failed else "")

        def on_trial_start(self, iteration, trials, trial, **info):
            self.running.append(trial.config.get("trial", str(trial)))
            self._show()

        def _ended(self, trial, failed: bool) -> None:
            name = trial.config.get("trial", str(trial))
            self.running = [r for r in self.running if r != name]
            self.ended, self.failed = self.ended + 1, self.failed + failed
            self._show()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._ended(trial, failed=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._ended(trial, failed=True)

    return TrialProgress(display)
