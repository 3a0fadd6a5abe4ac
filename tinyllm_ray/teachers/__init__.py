"""Teachers behind one seam (:mod:`tinyllm_ray.teachers.base`): each kind is a module and an entry in ``KINDS``.

To add a kind: write ``teachers/<kind>.py`` with a class satisfying :class:`~tinyllm_ray.teachers.base.Teacher`
(its constructor takes ``(config, model_path)``) and its ``remote_args`` / ``prepare`` functions, then add
``"<kind>": TeacherKind(...)`` below. The generic actor (:mod:`tinyllm_ray.teachers.actor`) and the recipe
(:mod:`tinyllm_ray.generate`) pick it up from here; nothing else changes. Modules must not import heavy engines at
import time: the driver imports all of them.
"""

from __future__ import annotations

from tinyllm_ray.config import TeacherConfig
from tinyllm_ray.teachers import imported as _imported
from tinyllm_ray.teachers import openai_api as _openai
from tinyllm_ray.teachers import vllm as _vllm
from tinyllm_ray.teachers.base import Rationales, Teacher, TeacherKind, placement_args, rationale_row

KINDS: dict[str, TeacherKind] = {
    "vllm": TeacherKind(build=_vllm.VLLMTeacher, remote_args=_vllm.remote_args, prepare=_vllm.prepare),
    "imported": TeacherKind(build=_imported.ImportedTeacher, remote_args=_imported.remote_args,
                            prepare=_imported.prepare, manifest_fields=_imported.manifest_fields, answers=False),
    "openai": TeacherKind(build=_openai.OpenAITeacher, remote_args=_openai.remote_args, prepare=_openai.prepare),
}
DEFAULT_KIND = "vllm"


def kind_of(teacher: TeacherConfig) -> TeacherKind:
    """The registry entry for ``teacher``: its ``kind`` field (vllm for configs without one)."""
    return KINDS[getattr(teacher, "kind", DEFAULT_KIND)]


def answering(teachers: list[TeacherConfig]) -> list[TeacherConfig]:
    """The teachers whose kind can answer the eval questions (the ones `evaluate` scores)."""
    return [t for t in teachers if kind_of(t).answers]


__all__ = ["DEFAULT_KIND", "KINDS", "Rationales", "Teacher", "TeacherKind", "answering", "kind_of", "placement_args",
           "rationale_row"]
