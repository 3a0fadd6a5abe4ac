"""How much work a vLLM teacher actor keeps in flight: enough sequences to fill its engine's scheduler
(``max_num_seqs``), which vLLM sizes itself from the card, and no more. Pure: no Ray, no vLLM.

Ray Data fixes an actor's concurrent calls when the pool is built, before any engine exists. With
``resources.shards_in_flight: auto`` the pool therefore lets each actor take enough shards for the largest
``max_num_seqs`` vLLM picks by default, and the actor's :class:`SequenceGate` admits to its engine only as many as
that engine's own ``max_num_seqs`` (read once it started); the rest wait at the gate. With a number, the number
holds, and an engine it cannot fill gets a warning.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tinyllm_ray.teacher_config import ResourceConfig

# vLLM 0.32's default max_num_seqs for the offline `LLM` class: 1024 on cards of 70 GB or more (not A100), 256 on
# smaller ones and 256 per tensor-parallel rank on CPU (EngineArgs._get_default_max_num_seqs_and_batched_tokens).
LARGEST_DEFAULT_MAX_NUM_SEQS = 1024


def expected_max_num_seqs(engine_extra: dict[str, Any]) -> int:
    """The most sequences the engine may schedule at once, as far as the driver can know before it starts: the
    job's own ``engine.extra.max_num_seqs``, else the largest of vLLM's defaults."""
    return int(engine_extra.get("max_num_seqs") or LARGEST_DEFAULT_MAX_NUM_SEQS)


def concurrent_shards(resources: ResourceConfig, engine_extra: dict[str, Any]) -> int:
    """Shards Ray Data hands one actor at once (its ``max_concurrent_calls_per_actor``)."""
    if resources.shards_in_flight == "auto":
        return max(1, math.ceil(expected_max_num_seqs(engine_extra) / resources.shard_size))
    return resources.shards_in_flight


def sequences_to_admit(resources: ResourceConfig, max_num_seqs: int) -> int | None:
    """The gate's limit for an engine that schedules ``max_num_seqs`` at once: that many under ``auto``, none (the
    job's number of shards holds) otherwise."""
    return max_num_seqs if resources.shards_in_flight == "auto" else None


def underfed_warning(teacher_name: str, resources: ResourceConfig, engine_extra: dict[str, Any],
                     max_num_seqs: int) -> str | None:
    """Why the engine will run below its batch, or None when the actor can keep ``max_num_seqs`` in flight."""
    shards = concurrent_shards(resources, engine_extra)
    in_flight = shards * resources.shard_size
    if in_flight >= max_num_seqs:
        return None
    if resources.shards_in_flight == "auto":
        fix = f"set engine.extra.max_num_seqs: {max_num_seqs} so the pool can give each actor enough shards"
    else:
        fix = (f"set resources.shards_in_flight: auto (or {math.ceil(max_num_seqs / resources.shard_size)}) "
               f"to fill it")
    return (f"teacher {teacher_name!r}: its vLLM engine schedules up to {max_num_seqs} sequences at once "
            f"(max_num_seqs), but each actor keeps only {in_flight} in flight ({shards} shards of "
            f"{resources.shard_size}): the engine runs below its batch; {fix}")


class SequenceGate:
    """Admits callers' batches of sequences while fewer than ``limit`` are in flight (no limit: admits all). A
    batch is admitted whole, so in flight stays below ``limit`` plus one batch: the engine's batch is kept full
    while the next shard waits here rather than in the engine's queue."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.in_flight = 0
        self.peak = 0  # the most sequences in flight at once so far
        self._changed = threading.Condition()

    @contextmanager
    def admit(self, sequences: int) -> Iterator[None]:
        with self._changed:
            while sequences and self.limit is not None and self.in_flight >= self.limit:
                self._changed.wait()
            self.in_flight += sequences
            self.peak = max(self.peak, self.in_flight)
        try:
            yield
        finally:
            with self._changed:
                self.in_flight -= sequences
                self._changed.notify_all()
