"""The teacher seam: what every kind of teacher (a vLLM engine, an HTTP endpoint, rationales imported from files)
gives the generate stage. Orchestration (shards, resume, stats, manifests) lives elsewhere and never looks inside.

A kind is one module with a class satisfying :class:`Teacher`, plus one entry in ``tinyllm_ray.teachers.KINDS``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from tinyllm_ray.config import ResourceConfig, TeacherConfig
from tinyllm_ray.layout import RunLayout


@dataclass(frozen=True)
class Rationales:
    """What a teacher made of one shard's problems."""

    rows: list[dict[str, Any]]  # one row of schemas.RATIONALE_SCHEMA per problem, in the problems' order
    cached_prompt_tokens: int = 0  # prompt tokens a prefix cache served instead of computing them (0 if none)


class Teacher(Protocol):
    """Turns the problems of one shard into rationale (or answer) rows. Built once per actor as
    ``TeacherKind.build(teacher_config, model_path)``; ``rationales`` is called from up to
    ``resources.shards_in_flight`` threads at once, so it must be thread-safe.

    A row that fails (prompt too long, a request refused) is data: its ``error`` set, ``finish_reason`` "error".
    Raise only when the teacher itself is unusable (an engine that died, an endpoint that refuses every call): the
    shard is then retried on a new actor, and the stage fails if that keeps happening.
    """

    def rationales(self, problems: list[dict[str, Any]], demos: list[list[dict[str, Any]]], mode: str,
                   sampling: dict[str, Any]) -> Rationales:
        """``problems``: rows of schemas.PROBLEM_SCHEMA; ``demos[i]``: the in-context demonstrations picked for
        problem i; ``mode``: "rationale" (teacher forcing: the prompt gives the gold answer) or "answer" (asked
        without it); ``sampling``: config.SamplingConfig's fields as a dict (temperature, top_p, max_tokens, seed,
        stop), already adjusted for the mode."""
        ...

    def close(self) -> None:
        """Release engines, connections and threads. Called when the actor exits gracefully (not after a crash)."""
        ...


@dataclass(frozen=True)
class TeacherKind:
    """What orchestration needs to know about one kind of teacher: everything else stays inside its module."""

    build: Callable[[TeacherConfig, str], Teacher]  # in the actor: (teacher config, prepare's result) -> a Teacher
    remote_args: Callable[[TeacherConfig], dict[str, Any]]  # Ray remote args of its actors (num_cpus, runtime_env...)
    prepare: Callable[[TeacherConfig, RunLayout], str]  # on the driver, before any actor: check the config, resolve
    # (build, write) what the actors load; returns its location (the manifest's model_path). Teachers in turn, and
    # only those with output to write; the frozen problems exist by then.
    manifest_fields: Callable[[TeacherConfig, str], dict[str, Any]] | None = None  # extra teacher-manifest fields
    answers: bool = True  # it can answer the eval questions (`evaluate` scores it); an imported teacher cannot


def placement_args(resources: ResourceConfig) -> dict[str, Any]:
    """The Ray remote args every kind's actors take from ``teachers[].resources``."""
    args: dict[str, Any] = {"num_cpus": resources.num_cpus_per_actor, "num_gpus": resources.num_gpus_per_actor}
    if resources.accelerator_type:
        args["accelerator_type"] = resources.accelerator_type
    if resources.custom_resources:
        args["resources"] = dict(resources.custom_resources)
    return args


def rationale_row(teacher: TeacherConfig, problem: dict[str, Any], sampling: dict[str, Any],
                  prompt: str = "") -> dict[str, Any]:
    """A rationale row for ``problem``, marked failed (finish_reason "error") until the teacher fills it in."""
    return dict(id=problem["id"], dataset=problem["dataset"], teacher=teacher.name, model=teacher.model,
                prompt=prompt, rationale="", num_prompt_tokens=0, num_generated_tokens=0, finish_reason="error",
                sampling_params=json.dumps(sampling, sort_keys=True), error=None)
