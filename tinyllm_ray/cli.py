"""`tinyllm-ray`: generate rationales, distil a student, evaluate, or all at once. Heavy imports stay lazy."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from tinyllm_ray.cli_data import data_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="TinyLLM multi-teacher distillation on Ray: vLLM teachers -> rationales -> DeepSpeed student.")

app.add_typer(data_app, name="data")

ConfigArg = typer.Argument("demo", help="Job config: a YAML file or a shipped preset name (`tinyllm-ray presets`).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config key, e.g. --set training.zero_stage=3 "
                      "or --set teachers.NAME.sampling.temperature=0.7 (repeatable).")
ForceOpt = typer.Option(False, "--force", help="Regenerate/retrain even when outputs for another config exist.")
OutOpt = typer.Option(None, "--output-dir", "-o", help="Shortcut for --set output_dir=...")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Show everything on the console (Ray, vLLM, DeepSpeed, "
                          "workers, INFO logs), not only in OUTPUT_DIR/logs/console.log.")


def _load(config: str, overrides: Optional[list[str]], output_dir: Optional[str]):
    from tinyllm_ray.config import load_config

    overrides = list(overrides or [])
    if output_dir:
        overrides.append(f"output_dir={output_dir}")
    return load_config(config, overrides)


def _save_resolved(job) -> None:
    from tinyllm_ray.config import config_to_yaml
    from tinyllm_ray.layout import RunLayout

    layout = RunLayout.of(job.output_dir)
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(config_to_yaml(job))


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2) from None


def _run_stage(stage, name: str, config: str, overrides, output_dir, verbose: bool, checks: dict | None = None,
               **kwargs) -> Any:
    """Load the config, run the preflight checks, save the resolved config beside the outputs, run a stage with
    its console (:mod:`tinyllm_ray.console`: everything but the stages' own lines goes to OUTPUT_DIR/logs/ unless
    ``verbose``). The project's errors (``TinyLLMError``) print one clear message and exit 2."""
    from tinyllm_ray.console import LOG_FILE, routed_output, warnings_shown
    from tinyllm_ray.errors import TinyLLMError
    from tinyllm_ray.layout import RunLayout
    from tinyllm_ray.preflight import preflight
    from tinyllm_ray.runtime import disconnect

    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        job = _load(config, overrides, output_dir)
        with warnings_shown(verbose):
            preflight(job, name, **(checks or {}))  # before the log: a refused command writes nothing
    except TinyLLMError as err:
        _fail(err)
    logs = RunLayout.of(job.output_dir).logs
    try:
        with routed_output(logs, verbose, on_exit=disconnect):
            _save_resolved(job)
            return stage(job, **kwargs)
    except TinyLLMError as err:
        _fail(err)
    except Exception:
        if not verbose:
            typer.secho(f"the full log: {logs / LOG_FILE}", fg=typer.colors.RED, err=True)
        raise


def _with_job(stage):
    """The stage, also returning its job: the closing summary needs the run's layout."""
    return lambda job, **kwargs: (job, stage(job, **kwargs))


def _write_page(root: str) -> Optional[Path]:
    """report.html at the end of `run` and `sweep`; a failure to draw it only warns, the run's artifacts stand."""
    from tinyllm_ray.report import write_report

    try:
        return write_report(root)
    except Exception as err:  # noqa: BLE001 - `tinyllm-ray report` retries it from the same artifacts
        typer.secho(f"warning: report.html not written ({type(err).__name__}: {err}); "
                    f"retry with `tinyllm-ray report {root}`", fg=typer.colors.YELLOW, err=True)
        return None


@app.command()
def generate(config: str = ConfigArg, overrides: Optional[list[str]] = SetOpt, output_dir: Optional[str] = OutOpt,
             force: bool = ForceOpt, verbose: bool = VerboseOpt,
             teacher: Optional[list[str]] = typer.Option(None, "--teacher", "-t", help="Only these teachers.")):
    """Write each teacher's rationales for the train split (reuses teachers whose config is unchanged)."""
    from tinyllm_ray.closing import generate_summary
    from tinyllm_ray.generate import generate as run
    from tinyllm_ray.layout import RunLayout

    job, manifests = _run_stage(_with_job(run), "generate", config, overrides, output_dir, verbose,
                                checks={"only": teacher}, force=force, only=teacher)
    typer.echo(generate_summary(RunLayout.of(job.output_dir), manifests, config))


@app.command()
def train(config: str = ConfigArg, overrides: Optional[list[str]] = SetOpt, output_dir: Optional[str] = OutOpt,
          force: bool = ForceOpt, verbose: bool = VerboseOpt):
    """Distil the student from the rationales with Ray Train + DeepSpeed; export it in HF format."""
    from tinyllm_ray.closing import train_summary
    from tinyllm_ray.layout import RunLayout
    from tinyllm_ray.train import train as run

    job, manifest = _run_stage(_with_job(run), "train", config, overrides, output_dir, verbose, force=force)
    typer.echo(train_summary(RunLayout.of(job.output_dir), manifest, config))


@app.command()
def evaluate(config: str = ConfigArg, overrides: Optional[list[str]] = SetOpt, output_dir: Optional[str] = OutOpt,
             verbose: bool = VerboseOpt,
             teachers: Optional[bool] = typer.Option(None, "--teachers/--no-teachers",
                                                     help="Also measure teachers (default: evaluation.teachers).")):
    """Accuracy of the student (and teachers) on the held-out split; writes a JSON report and a table."""
    from tinyllm_ray.closing import evaluate_summary
    from tinyllm_ray.evaluate import evaluate as run
    from tinyllm_ray.layout import RunLayout

    job, report = _run_stage(_with_job(run), "evaluate", config, overrides, output_dir, verbose,
                             checks={"teachers": teachers}, teachers=teachers)
    typer.echo(evaluate_summary(RunLayout.of(job.output_dir), report, config))


@app.command()
def run(config: str = ConfigArg, overrides: Optional[list[str]] = SetOpt, output_dir: Optional[str] = OutOpt,
        force: bool = ForceOpt, verbose: bool = VerboseOpt):
    """All stages: generate -> train -> evaluate -> report.html; finished stages with unchanged config are reused."""
    from tinyllm_ray.closing import run_summary
    from tinyllm_ray.evaluate import evaluate as run_evaluate
    from tinyllm_ray.layout import RunLayout
    from tinyllm_ray.generate import generate as run_generate
    from tinyllm_ray.train import train as run_train

    def all_stages(job, force):
        from tinyllm_ray.cluster_state import require_job_fit

        require_job_fit(job, job.teachers, training=True)  # before generating: training's fit is known already
        # the teachers' answers for the evaluation come from the same engines as their rationales
        run_generate(job, force=force, teacher_answers=job.evaluation.teachers)
        run_train(job, force=force)
        return run_evaluate(job)

    job, report = _run_stage(_with_job(all_stages), "run", config, overrides, output_dir, verbose, force=force)
    typer.echo(run_summary(RunLayout.of(job.output_dir), report, config, _write_page(job.output_dir)))


@app.command()
def sweep(config: str = ConfigArg, overrides: Optional[list[str]] = SetOpt, output_dir: Optional[str] = OutOpt,
          force: bool = ForceOpt, verbose: bool = VerboseOpt,
          max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1,
                                                       help="Shortcut for --set sweep.max_concurrent_trials=N.")):
    """Train and evaluate every setting of the `sweep` config section (alpha, teacher subsets, students, data
    fractions, baselines) with Ray Tune over the cached rationales; write one results table and plot, then
    report.html.

    Exit code 1 when some trial failed (its error is in the table), 2 on bad input."""
    from tinyllm_ray.closing import sweep_summary
    from tinyllm_ray.layout import RunLayout
    from tinyllm_ray.sweep import run_sweep as run

    overrides = list(overrides or [])
    if max_concurrent is not None:
        overrides.append(f"sweep.max_concurrent_trials={max_concurrent}")
    job, results = _run_stage(_with_job(run), "sweep", config, overrides, output_dir, verbose, force=force)
    typer.echo(sweep_summary(RunLayout.of(job.output_dir), results, _write_page(job.output_dir)))
    if results["failed"]:
        typer.secho(f"{len(results['failed'])} trial(s) failed: {', '.join(results['failed'])}",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command()
def validate(config: str = ConfigArg, overrides: Optional[list[str]] = SetOpt, output_dir: Optional[str] = OutOpt,
             show: bool = typer.Option(False, "--show", help="Print the resolved config as YAML.")):
    """Check a job config, its data, models and metrics sinks without starting Ray; print what would run."""
    from tinyllm_ray.config import config_to_yaml
    from tinyllm_ray.data import load_problems
    from tinyllm_ray.errors import TinyLLMError
    from tinyllm_ray.preflight import preflight

    try:
        job = _load(config, overrides, output_dir)
        preflight(job, "validate")
        counts = {split: load_problems(job.data, split).num_rows
                  for split in (job.data.train_split, job.data.eval_split)}
    except TinyLLMError as err:
        _fail(err)
    if show:
        typer.echo(config_to_yaml(job))
    training = job.training
    typer.echo(f"ok: job {job.name!r}, data {job.data.dataset} {counts}, teachers "
               f"{[t.name for t in job.teachers]}, student {job.student.model}, ZeRO-{training.resolved_zero_stage} "
               f"x {training.num_workers} worker{'s' if training.num_workers > 1 else ''} -> {job.output_dir}")


@app.command()
def inspect(path: Path = typer.Argument(..., help="An output_dir, or one artifact folder inside it."),
            as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Summarise artifacts as tables: completeness, row counts, errors, per-teacher token and quality stats."""
    from rich.console import Console

    from tinyllm_ray.errors import TinyLLMError
    from tinyllm_ray.summary import summarize
    from tinyllm_ray.summary_table import findings, summary_tables

    try:
        summary = summarize(path)
    except TinyLLMError as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    console = Console()
    for table in summary_tables(summary):
        console.print(table)
    for finding in findings(summary):
        console.print(f"warning: {finding}", markup=False, highlight=False)


@app.command(help="Write RUN_DIR/report.html for a run or a sweep: charts, accuracy, teachers, example rationales."
             "\n\nOne self-contained page (charts embedded; opens from disk, no network): training loss per task, "
             "each teacher's rationale lengths, quality flags, agreement with the gold answer, tokens and time; "
             "accuracy of the student and teachers with 95% intervals; a sweep's trials; example rationales side "
             "by side.")
def report(path: Path = typer.Argument(..., metavar="RUN_DIR",
                                       help="An output_dir of `run` or `sweep` (also one still running).")):
    from tinyllm_ray.errors import TinyLLMError
    from tinyllm_ray.report import write_report

    try:
        page = write_report(path)
    except TinyLLMError as err:
        _fail(err)
    typer.echo(f"report: {page}\nopen it in a browser: file://{page}")


@app.command()
def presets():
    """List the job presets shipped in the package."""
    from tinyllm_ray.config import preset_names

    typer.echo("\n".join(preset_names()))


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
