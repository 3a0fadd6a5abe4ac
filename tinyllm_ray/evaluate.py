"""Recipe: accuracy of the student (answer prefix only) and of each teacher asked without the gold answer.

The student is scored by ``evaluation.method`` (:mod:`tinyllm_ray.scoring`: the paper's greedy answer + exact
match, lm-evaluation-harness's option log-likelihood, or both side by side) in a Ray Data job over
``evaluation.actors`` actors that each load it once (:mod:`tinyllm_ray.evaluation_job`), with vLLM for a decoder-only
student or transformers (``evaluation.backend``). Every accuracy comes with its 95 % Wilson interval
(:mod:`tinyllm_ray.stats`).

Writes ``evaluation/report.json`` and ``evaluation/report.md`` (:class:`~tinyllm_ray.layout.RunLayout` names them),
then the manifest (with the ``backend`` and ``actors`` that scored the student), whose ``fingerprint`` (:func:`evaluation_fingerprint`) says which student, problems and
settings the report scored, so a sweep can reuse it (:func:`tinyllm_ray.artifacts.reusable`).

report.json: ``job``, ``dataset``, ``split``, ``methods`` (the student's, in order), ``level`` (0.95),
``interval_method`` ("wilson"), ``seconds`` and ``results``: one entry per model and method, each ``name``,
``role`` (student / teacher), ``method``, ``accuracy``, ``correct``, ``total``, ``interval`` ([low, high]) and
``predictions`` (per problem: ``id``, ``prediction``, ``gold``, ``correct``, and for log-likelihood the option
``picked`` with every option's ``loglikelihoods`` and ``scores``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from tinyllm_ray import prompts
from tinyllm_ray.config import JobConfig, fingerprint_view, stable_hash
from tinyllm_ray.console import current as console
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.schemas import ArtifactError, RATIONALE_SCHEMA, read_manifest, read_table, write_manifest
from tinyllm_ray.scoring import ScoringOptions, methods_of, resolve_backend
from tinyllm_ray.stats import LEVEL, wilson_interval

log = logging.getLogger("tinyllm_ray")
REPORT_FORMAT = 2  # 2: methods, intervals; part of the fingerprint, so older reports are not reused


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy, counts and the Wilson interval of per-problem rows that carry ``correct``."""
    total = len(rows)
    hits = sum(bool(r["correct"]) for r in rows)
    low, high = wilson_interval(hits, total, LEVEL)
    return {"accuracy": hits / total if total else 0.0, "correct": hits, "total": total, "interval": [low, high]}


def score(problems: list[dict], predictions: list[str], parse: bool) -> dict[str, Any]:
    """Accuracy of free-text answers: the student must produce the gold option text (normalised); teachers may
    name a letter (``parse``)."""
    rows = []
    for problem, prediction in zip(problems, predictions):
        if parse:
            picked = prompts.parse_choice(prediction, problem["choices"])
            correct = picked == problem["answer_index"]
        else:
            correct = prompts.exact_match(prediction, problem["answer"])
        rows.append({"id": problem["id"], "prediction": prediction, "gold": problem["answer"], "correct": correct})
    return {**summarise(rows), "predictions": rows}


def result_key(entry: Mapping[str, Any]) -> str:
    """A result's name, with its method unless that is the default ``generate`` (manifest and `inspect` keys)."""
    method = entry.get("method", "generate")
    return entry["name"] if method == "generate" else f"{entry['name']} [{method}]"


def _interval_text(entry: Mapping[str, Any]) -> str:
    low, high = entry["interval"]
    return f"{low:.1%} - {high:.1%}"


def render_table(report: dict[str, Any]) -> str:
    level = report.get("level", LEVEL)
    lines = [f"# Evaluation: {report['job']} ({report['dataset']}, split {report['split']})", "",
             f"| model | role | method | accuracy | {level:.0%} interval | correct / total |",
             "|---|---|---|---|---|---|"]
    for entry in report["results"]:
        lines.append(f"| {entry['name']} | {entry['role']} | {entry.get('method', 'generate')} | "
                     f"{entry['accuracy']:.2%} | {_interval_text(entry)} | {entry['correct']} / {entry['total']} |")
    lines += ["", f"Intervals: Wilson score, {level:.0%}. Methods: generate = greedy answer, exact match to the gold "
              "option (teachers: the option their answer names); loglikelihood = the option with the highest "
              "log-likelihood per character (lm-evaluation-harness acc_norm)."]
    return "\n".join(lines) + "\n"


def vllm_installed() -> bool:
    """Whether vLLM (GPU or CPU build) is installed, without importing it: the driver never does."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def student_backend(config: JobConfig, student: Mapping[str, Any]) -> str:
    """The backend that scores this student (``evaluation.backend`` resolved), or a config error saying why not."""
    from tinyllm_ray.config import ConfigError

    try:
        return resolve_backend(config.evaluation.backend, bool(student["seq2seq"]), vllm_installed())
    except ValueError as err:
        raise ConfigError(str(err)) from None


def evaluation_fingerprint(config: JobConfig, layout: RunLayout, student: Mapping[str, Any]) -> str:
    """What a student's report depends on: the exact student (its manifest), the frozen eval problems, the
    evaluation settings (not how many actors run them) and the backend that runs the student (vLLM and
    transformers agree on almost every answer, not on every float); teachers' answers have fingerprints of their
    own."""
    problems = (read_manifest(layout.problems) or {}).get("fingerprint")
    backend = student_backend(config, student)
    return stable_hash({"report_format": REPORT_FORMAT, "student": student["fingerprint"],
                        "student_written": student["created_unix"], "problems": problems,
                        "evaluation": fingerprint_view(config.evaluation), "split": config.data.eval_split,
                        "task_prefix": config.prompts.task_prefix,
                        **({"backend": backend, "engine": fingerprint_view(config.evaluation.vllm)}
                           if backend == "vllm" else {})})


def student_results(problems: list[dict], model: str, rows_by_method: Mapping[str, list[dict]]) -> list[dict]:
    """One report entry per scoring method, in the methods' order."""
    return [{"name": f"student ({Path(model).name})", "role": "student", "method": method,
             **summarise(rows), "predictions": rows} for method, rows in rows_by_method.items()]


def evaluate(config: JobConfig, teachers: bool | None = None, layout: RunLayout | None = None) -> dict[str, Any]:
    """The `evaluate` stage on the held-out split (config.data.eval_split); ``layout`` as in `train`."""
    from tinyllm_ray.cluster_fit import evaluation_request
    from tinyllm_ray.cluster_state import require_fit
    from tinyllm_ray.evaluation_job import ScoringJob, remote_args, run_scoring
    from tinyllm_ray.generate import answer_pass, run_teachers
    from tinyllm_ray.problems import load_frozen_problems
    from tinyllm_ray.runtime import connect
    from tinyllm_ray.teachers import answering

    layout = layout or RunLayout.of(config.output_dir)
    student = read_manifest(layout.student)
    if student is None:
        raise ArtifactError(f"no finished student at {layout.student}: run `tinyllm-ray train` first")
    problems_table: pa.Table = load_frozen_problems(layout, "eval")
    problems = problems_table.to_pylist()
    methods = methods_of(config.evaluation.method)
    evaluation = config.evaluation
    backend = student_backend(config, student)
    connect(config)
    require_fit([evaluation_request(config.training)])
    console().stage_started("evaluate", f"student by {' + '.join(methods)} on {len(problems)} "
                                        f"{config.data.eval_split} problems ({backend}, {evaluation.actors} "
                                        f"actor{'s' if evaluation.actors > 1 else ''})")
    start = time.time()
    remote = remote_args(config.training, evaluation, backend)
    engine = {}
    if backend == "vllm":
        from tinyllm_ray.scoring.vllm_student import engine_kwargs

        engine = engine_kwargs(evaluation.vllm, str(layout.student), on_gpu=bool(remote["num_gpus"]))
    job = ScoringJob(str(layout.student), bool(student["seq2seq"]), backend, methods,
                     ScoringOptions(config.prompts.task_prefix, evaluation.batch_size, evaluation.max_new_tokens),
                     engine)
    display = console().progress("evaluate", len(problems), "problems")
    try:
        rows_by_method = run_scoring(job, problems_table, evaluation.actors, evaluation.problems_per_call, remote,
                                     on_progress=lambda done: display.update(done, backend=backend))
    finally:  # a live line left running would keep redrawing over whatever comes next
        display.close()
    results = student_results(problems, student["model"], rows_by_method)
    if config.evaluation.teachers if teachers is None else teachers:
        scored = answering(config.teachers)  # imported teachers have rationales, not answers
        run_teachers(config, layout, scored, [answer_pass(config, layout)])
        for teacher in scored:
            table = read_table(layout.teacher_answers / teacher.name, RATIONALE_SCHEMA)
            by_id = {r["id"]: r["rationale"] for r in table.to_pylist()}
            results.append({"name": teacher.name, "role": "teacher", "method": "generate",
                            **score(problems, [by_id.get(p["id"], "") for p in problems], parse=True)})
    report = {"job": config.name, "dataset": config.data.dataset, "split": config.data.eval_split,
              "methods": list(methods), "level": LEVEL, "interval_method": "wilson",
              "seconds": round(time.time() - start, 2), "results": results}
    layout.evaluation.mkdir(parents=True, exist_ok=True)
    layout.report_json.write_text(json.dumps(report, indent=2))
    layout.report_md.write_text(render_table(report))
    write_manifest(layout.evaluation, fingerprint=evaluation_fingerprint(config, layout, student),
                   student_fingerprint=student["fingerprint"], methods=list(methods), backend=backend,
                   actors=evaluation.actors,
                   accuracy={result_key(r): r["accuracy"] for r in results},
                   interval={result_key(r): r["interval"] for r in results})
    student_accuracy = ", ".join(f"{r['method']} {r['accuracy']:.1%}" for r in results if r["role"] == "student")
    console().stage_finished("evaluate", f"student {student_accuracy} -> {layout.report_md}")
    return report
