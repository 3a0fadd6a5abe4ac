"""What every config section shares: the strict base model, the project's config error, and the marks that say
what each artifact's fingerprint covers. Pure: imports neither Ray nor torch."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import to_jsonable_python

from tinyllm_ray.errors import TinyLLMError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ConfigError(TinyLLMError, ValueError):
    """A job configuration is invalid; the message names the file and dotted key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# ---------------------------------------------------------------- what each artifact's fingerprint covers
# Every field of a section counts towards the fingerprint of what that section produces (the problems, a teacher's
# rationales, the student), so a new field invalidates old artifacts by default. A mark opts a field out:
OPERATIONAL = {"fingerprint": "operational"}  # how a stage runs, not what it writes: in no fingerprint
STUDENT_INPUT = {"fingerprint": "student"}  # read only by training: the student's fingerprint, not the rationales'
UNLESS_DEFAULT = {"fingerprint": "unless_default"}  # counted once changed: artifacts older than the field stay valid


def fingerprint_view(model: BaseModel, skip: tuple[str, ...] = ("operational", "student")) -> dict[str, Any]:
    """The fields of ``model`` (recursively) that its artifact's fingerprint covers, as JSON-able values."""
    view: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        mark = (field.json_schema_extra or {}).get("fingerprint") if isinstance(field.json_schema_extra, dict) else None
        value = getattr(model, name)
        if mark in skip or (mark == "unless_default" and value == field.default):
            continue
        view[name] = fingerprint_view(value, skip) if isinstance(value, BaseModel) else to_jsonable_python(value)
    return view


def stable_hash(payload: Any) -> str:
    """Short content hash of any JSON-able value; used to detect config changes between runs."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
