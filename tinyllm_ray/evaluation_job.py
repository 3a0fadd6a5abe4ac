"""The student's scoring as a Ray Data job: the eval problems -> ``map_batches`` over a pool of
``evaluation.actors`` actors, each loading the student once (:class:`ScoringJob.load`: vLLM or transformers) ->
one small row per (problem, method), streamed back to the driver, which puts them in problem order.

The driver hands the actors only a frozen :class:`ScoringJob`; rows travel as JSON text because the methods' rows
differ in shape (log-likelihood rows carry every option's numbers). Ray is imported inside the functions that need
it; the rest is pure and unit-tested.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from tinyllm_ray.config import EvaluationConfig, TrainingConfig
from tinyllm_ray.scoring import ScoringOptions, StudentBackend, score_with

POSITION = "position"  # the problem's index in the eval split, added to the problems for the job
OUTPUT_COLUMNS = (POSITION, "method", "row")


@dataclass(frozen=True)
class ScoringJob:
    """What every evaluation actor needs: the student, how to run it, and what to score."""

    model_dir: str
    seq2seq: bool
    backend: str  # "vllm" or "transformers" (resolved: scoring.resolve_backend)
    methods: tuple[str, ...]
    options: ScoringOptions
    engine: Mapping[str, Any] = field(default_factory=dict)  # vllm.LLM keywords (vllm backend)

    def load(self) -> StudentBackend:
        """In the actor: the student, loaded once."""
        if self.backend == "vllm":
            from tinyllm_ray.scoring.vllm_student import VLLMStudent

            return VLLMStudent(self.engine)
        from tinyllm_ray.scoring import Student

        return Student.load(self.model_dir, self.seq2seq)


def output_rows(positions: Sequence[int], rows_by_method: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict:
    """One actor call's output columns: a row per (problem, method)."""
    out: dict[str, list] = {name: [] for name in OUTPUT_COLUMNS}
    for method, rows in rows_by_method.items():
        for position, row in zip(positions, rows, strict=True):
            out[POSITION].append(int(position))
            out["method"].append(method)
            out["row"].append(json.dumps(row))
    return out


def gather(records: Iterable[Mapping[str, Any]], count: int, methods: Sequence[str]) -> dict[str, list[dict]]:
    """The job's rows per method, in problem order; every (problem, method) exactly once, or an error saying which
    is missing (a lost call Ray Data did not retry) or repeated."""
    found: dict[str, list[dict | None]] = {method: [None] * count for method in methods}
    for record in records:
        method, position = str(record["method"]), int(record[POSITION])
        if method not in found or not 0 <= position < count:
            raise RuntimeError(f"the evaluation job returned a row for {method!r} problem {position}, which it was "
                               f"not asked for ({count} problems, methods {list(methods)})")
        if found[method][position] is not None:
            raise RuntimeError(f"the evaluation job returned problem {position} twice for {method!r}")
        found[method][position] = json.loads(record["row"])
    for method, rows in found.items():
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            raise RuntimeError(f"the evaluation job returned no {method!r} row for {len(missing)} of {count} "
                               f"problems (first: problem {missing[0]}); rerun `tinyllm-ray evaluate`")
    return found  # type: ignore[return-value]


def remote_args(training: TrainingConfig, evaluation: EvaluationConfig, backend: str) -> dict[str, Any]:
    """One evaluation actor's Ray arguments: one training worker's resources (what ``require_fit`` checks:
    on the trainers' nodes, so the student never takes a teacher node's GPU; its CPUs size the actor's torch
    threads), a vLLM student the CPU teachers' engine environment. Scheduled on the cluster, not in the caller's
    placement group (a sweep's Tune trial has no room for it there)."""
    from tinyllm_ray.cluster_fit import worker_resources
    from tinyllm_ray.runtime import teacher_env

    resources = worker_resources(training)
    on_gpu = bool(resources.get("GPU"))
    args: dict[str, Any] = {"num_cpus": resources.pop("CPU"), "num_gpus": resources.pop("GPU", 0),
                            "scheduling_strategy": "DEFAULT"}
    if resources:
        args["resources"] = resources
    if backend == "vllm":
        args["runtime_env"] = {"env_vars": teacher_env(on_gpu, evaluation.vllm.allocator)}
    return args


class StudentActor:
    """A Ray Data actor: loads the student once, then scores each batch of problems by every method."""

    def __init__(self, job: ScoringJob):
        self.job = job
        self.student = job.load()

    def __call__(self, batch: pa.Table) -> dict:
        problems = batch.to_pylist()
        rows = score_with(self.student, problems, self.job.methods, self.job.options)
        return output_rows([p[POSITION] for p in problems], rows)


def run_scoring(job: ScoringJob, problems: pa.Table, actors: int, problems_per_call: int, remote: Mapping[str, Any],
                on_progress: Callable[[int], None] | None = None) -> dict[str, list[dict]]:
    """Score ``problems`` (rows of schemas.PROBLEM_SCHEMA) on a pool of ``actors``; ``on_progress(problems done)``
    as calls finish. Returns rows per method, in the problems' order."""
    import ray

    from tinyllm_ray.runtime import rows_as_they_come

    count = problems.num_rows
    if count == 0:
        return {method: [] for method in job.methods}
    table = problems.append_column(POSITION, pa.array(range(count), pa.int64()))
    # one block per call: a single block would reach the pool as one input, one actor's work at a time
    blocks = [table.slice(start, problems_per_call) for start in range(0, count, problems_per_call)]
    with warnings.catch_warnings():
        # Ray 2.60 deprecates remote arguments it has no named parameter for, scheduling_strategy among them; the
        # actors still need it to run outside a sweep trial's placement group
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        scored = ray.data.from_arrow(blocks).map_batches(
            StudentActor, fn_constructor_kwargs={"job": job}, batch_size=problems_per_call, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=min(actors, -(-count // problems_per_call))), **remote)
    records: list[dict] = []
    for record in rows_as_they_come(scored):
        records.append(record)
        if on_progress is not None:
            on_progress(len(records) // max(len(job.methods), 1))
    return gather(records, count, job.methods)
