"""One rule for every artifact folder (problems, a teacher's output, the student, an evaluation): reuse it when
its manifest was written for the same fingerprint, else rebuild it, or refuse where rebuilding would silently
replace work that later artifacts depend on. Pure file logic: no Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinyllm_ray.layout import PROGRESS
from tinyllm_ray.schemas import ArtifactError, read_manifest


class StaleArtifactError(ArtifactError):
    """An artifact folder holds output of a different config; the message says how to keep or replace it."""


def recorded_fingerprint(directory: Path) -> tuple[str | None, str]:
    """The fingerprint a folder was (or is being) written for, and its state: finished, partial or missing."""
    manifest = read_manifest(directory)
    if manifest is not None:
        return manifest.get("fingerprint"), "finished"
    progress = Path(directory) / PROGRESS
    if progress.is_file():
        return json.loads(progress.read_text()).get("fingerprint"), "partial"
    return None, "missing"


def reusable(directory: Path, fingerprint: str, force: bool = False,
             refuse: str | None = None) -> dict[str, Any] | None:
    """The manifest to reuse, or None when the artifact must be (re)built.

    ``force``: always rebuild. A folder holding finished or partial output of another fingerprint is rebuilt, or,
    with ``refuse`` (what to do instead, for the message), stops the run before anything is touched. Partial output
    of the same fingerprint returns None too: its writer resumes it.
    """
    if force:
        return None
    recorded, state = recorded_fingerprint(directory)
    if recorded is not None and recorded != fingerprint:
        if refuse is not None:
            raise StaleArtifactError(f"{directory} holds {state} output of a different config. {refuse}")
        return None
    return read_manifest(directory) if state == "finished" else None
