"""The Ray Data actor that writes a teacher's shards, whatever kind of teacher it holds: it reads each shard's
problems, picks their demonstrations, asks the teacher, and writes the shard atomically with its stats in the
Parquet footer. It knows nothing of vLLM."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import pyarrow as pa

from tinyllm_ray.config import PromptConfig, TeacherConfig
from tinyllm_ray.generation_plan import (
    GenerationError, PassPlan, ShardPlan, demos_from_pool, kept_rows, merge_rows, rationale_stats,
)
from tinyllm_ray.schemas import PROBLEM_SCHEMA, RATIONALE_SCHEMA, read_rows, write_table

SUMMARY_KEYS = ("pass", "shard", "rows", "errors", "generated_tokens", "node", "seconds", "warnings", "startup")


def process_started_unix() -> float:
    """When this process was started (Unix time): where an actor's start-up began, before its imports."""
    import psutil  # declared in pyproject; vLLM needs it too

    return psutil.Process().create_time()


def shard_descriptor(index: int, shard: ShardPlan) -> dict[str, int]:
    """One input row of the actor pool: shard ``shard`` of the actor's pass ``index``."""
    return {"pass": index, "shard": shard.shard, "offset": shard.offset, "rows": shard.rows}


class ActorWarnings(logging.Handler):
    """The package's warnings raised in the actor (e.g. an underfed engine), carried to the driver in the next shard
    summary so they reach the user's console: the actor's own output only reaches the log."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self._lock = threading.Lock()  # shards are written in several threads at once
        self._texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock:
            self._texts.append(record.getMessage())

    def take(self) -> str:
        """The warnings since the last call, each text once, one per line ("" for none)."""
        with self._lock:
            texts, self._texts = self._texts, []
        return "\n".join(dict.fromkeys(texts))


class TeacherActor:
    """Ray Data runs up to ``resources.shards_in_flight`` calls at once in the actor's threads, all through one
    teacher (built by its kind's ``build``). A retried shard just rewrites its file.

    ``teacher``: the teacher's config (of any kind); ``model_path``: what the kind's ``prepare`` returned;
    ``demo_pool``: the frozen train problems (or an ObjectRef to them); ``demos``: ``config.prompts``; ``passes``:
    what shard descriptors can ask for, by index.
    """

    def __init__(self, teacher: TeacherConfig, model_path: str, demo_pool: Any, demos: dict, passes: list[PassPlan]):
        import ray

        from tinyllm_ray.teachers import kind_of

        # when its process started, its constructor ran and its teacher was ready: the driver logs where the
        # pool's start-up went (the first shard summary carries it)
        self.startup = {"process_started": process_started_unix(), "constructor_started": time.time()}
        self.warnings = ActorWarnings()
        logging.getLogger("tinyllm_ray").addHandler(self.warnings)  # this process is the actor's alone
        self.teacher = kind_of(teacher).build(teacher, model_path)
        # Kept as Arrow, read zero-copy from the object store (one copy per node); each problem slices out only its
        # demos' rows. As Python dicts the pool would cost several times its Arrow size in every actor.
        self.pool = demo_pool if isinstance(demo_pool, pa.Table) else ray.get(demo_pool)
        self.demos = PromptConfig.model_validate(demos)
        self.passes = passes
        self.node_id = ray.get_runtime_context().get_node_id()
        self.startup["ready"] = time.time()
        self._startup_told = threading.Event()

    def __call__(self, batch: dict) -> dict:
        """Generate whole shards (each row of ``batch`` is a :func:`shard_descriptor`); one small summary row per
        shard comes back, for progress and metrics."""
        summary: dict[str, list] = {key: [] for key in SUMMARY_KEYS}
        for index, shard, offset, count in zip(batch["pass"], batch["shard"], batch["offset"], batch["rows"]):
            start = time.time()
            stats = self.write_shard(self.passes[int(index)], ShardPlan(int(shard), int(offset), int(count)))
            for key, value in (("pass", int(index)), ("shard", int(shard)), ("rows", stats["rows"]),
                               ("errors", stats["errors"]), ("generated_tokens", stats["generated_tokens"]),
                               ("node", self.node_id), ("seconds", time.time() - start),
                               ("warnings", self.warnings.take()), ("startup", self._startup_once())):
                summary[key].append(value)
        return summary

    def _startup_once(self) -> str:
        """The start-up times as JSON in the first summary this actor returns, "" in the others (a race between
        two threads at worst tells it twice)."""
        if self._startup_told.is_set():
            return ""
        self._startup_told.set()
        return json.dumps(self.startup)

    def write_shard(self, plan: PassPlan, shard: ShardPlan) -> dict[str, Any]:
        """Generate one shard and write it with its stats (and node) in the footer; returns the stats."""
        # the demo pool is the train split, already in memory: a train shard is a slice of it
        rows = (self.pool.slice(shard.offset, shard.rows) if plan.in_demo_pool
                else read_rows(plan.problems_path, shard.offset, shard.rows, PROBLEM_SCHEMA))
        problems = rows.to_pylist()
        demos = demos_from_pool(self.pool, problems, shard.offset if plan.in_demo_pool else None,
                                self.demos.num_demos, self.demos.demo_seed, self.demos.demo_sampler)
        kept = kept_rows(plan.shard_path(shard.shard))  # a rerun asks again for the failed rows only
        asked = [i for i, p in enumerate(problems) if p["id"] not in kept]
        result = self.teacher.rationales([problems[i] for i in asked], [demos[i] for i in asked],
                                         plan.teacher_pass.mode, plan.sampling)
        if [r["id"] for r in result.rows] != [problems[i]["id"] for i in asked]:
            raise GenerationError(f"the teacher returned rows for other problems than shard {shard.shard}'s "
                                  "(a teacher must return one row per problem, in order)")
        table = pa.Table.from_pylist(merge_rows(problems, kept, result.rows), schema=RATIONALE_SCHEMA)
        stats = rationale_stats(table.to_pylist(), {p["id"]: p for p in problems})
        stats["cached_prompt_tokens"] = result.cached_prompt_tokens
        write_table(table, plan.shard_path(shard.shard), footer={"stats": stats, "node": self.node_id})
        return stats

    def __del__(self):
        """Ray Data deletes the actor's callable when the actor exits gracefully: the teacher lets go then."""
        teacher = getattr(self, "teacher", None)
        if teacher is not None:
            teacher.close()
