"""Recipe: problems -> teachers (Ray Data, one actor pool per teacher, all pools in parallel) -> rationale Parquet.

Each teacher's output is its own directory with a manifest written last; a rerun reuses every teacher whose
fingerprint (model, prompt, sampling, problems) is unchanged, resumes partial output shard by shard and regenerates
only the rest. Read top-down: :func:`generate` (the stage), :func:`run_teachers` (every teacher's passes, reused or
planned), then one teacher's actor pool. The plan is :mod:`tinyllm_ray.generation_plan` (pure), the actors and the
kinds of teacher are :mod:`tinyllm_ray.teachers`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tinyllm_ray.config import JobConfig, TeacherConfig
from tinyllm_ray.console import current as console
from tinyllm_ray.generation_plan import (
    DEMO_POOL_ROLE, GenerationError, PassPlan, TeacherPass, answer_pass, collect_shard_stats, plan_pass,
    rationale_pass, reuse, teacher_fingerprint,
)
from tinyllm_ray.layout import MANIFEST, RunLayout
from tinyllm_ray.progress import ProgressDisplay, rate_text
from tinyllm_ray.runtime import rows_as_they_come
from tinyllm_ray.problems import load_frozen_problems, prepare_problems
from tinyllm_ray.schemas import read_manifest, write_manifest
from tinyllm_ray.teachers import kind_of

__all__ = ["GenerationError", "answer_pass", "generate", "rationale_pass", "run_teachers"]

log = logging.getLogger("tinyllm_ray")
PROGRESS_KEYS = ("rows", "errors", "generated_tokens")  # summed from the actors' shard summaries for metrics


def generate(config: JobConfig, force: bool = False, only: list[str] | None = None,
             teacher_answers: bool = False) -> dict[str, dict[str, Any]]:
    """The `generate` stage: freeze problems, then write rationales for every (or the named) teacher. With
    ``teacher_answers`` (what `run` asks when the evaluation scores teachers), the same engines also answer the eval
    split, so `evaluate` finds those answers written instead of starting every teacher again."""
    from tinyllm_ray.runtime import connect

    layout = RunLayout.of(config.output_dir)
    prepare_problems(config, layout, force=force)
    connect(config)
    teachers = [t for t in config.teachers if only is None or t.name in only]
    unknown = sorted(set(only or []) - {t.name for t in config.teachers})
    if unknown:
        raise GenerationError(f"unknown teacher(s) {unknown}; known: {[t.name for t in config.teachers]}")
    passes = [rationale_pass(layout, force)] + ([answer_pass(config, layout)] if teacher_answers else [])
    problems = read_manifest(layout.problems) or {}
    console().stage_started("generate", f"{len(teachers)} teacher(s): {', '.join(t.name for t in teachers)}; "
                                        f"{problems.get('counts', {}).get('train', '?')} train problems")
    manifests = run_teachers(config, layout, teachers, passes)[0]
    rows = sum(m["counts"]["rows"] for m in manifests.values())
    errors = sum(m["counts"]["errors"] for m in manifests.values())
    console().stage_finished("generate", f"{rows} rationales, {errors} errors -> {layout.rationales}")
    return manifests


def run_teachers(config: JobConfig, layout: RunLayout, teachers: list[TeacherConfig],
                 passes: list[TeacherPass]) -> list[dict[str, dict[str, Any]]]:
    """Write every pass of every teacher whose output is missing, partial or forced (all teachers' pools at once;
    each teacher's passes through one pool); return each pass's manifests by teacher name."""
    import ray

    from tinyllm_ray.cluster_state import require_fit, teacher_requests

    problems_fingerprint = (read_manifest(layout.problems) or {}).get("fingerprint", "")
    manifests: list[dict[str, dict[str, Any]]] = [{} for _ in passes]
    pending: dict[str, dict[int, str]] = {}  # teacher name -> {pass index: fingerprint} of the passes to write
    for teacher in teachers:
        for index, teacher_pass in enumerate(passes):
            if teacher_pass.mode == "answer" and not kind_of(teacher).answers:
                continue  # e.g. an imported teacher: rationales only, nothing to score it on
            fingerprint = teacher_fingerprint(config, teacher, problems_fingerprint, teacher_pass.mode)
            manifest = reuse(teacher, teacher_pass, fingerprint)
            if manifest and _damaged_shards(layout, teacher, teacher_pass, fingerprint):
                manifest = None  # resumed like an interrupted pass: the damaged shards are written again
            if manifest:
                log.info("teacher %s: reusing %s (%d rows)", teacher.name, teacher_pass.out_dir(teacher.name),
                         manifest["counts"]["rows"])
                manifests[index][teacher.name] = manifest
            else:
                pending.setdefault(teacher.name, {})[index] = fingerprint
    if not pending:
        return manifests
    by_name = {t.name: t for t in teachers}
    require_fit(teacher_requests(by_name[name] for name in pending))  # before anything starts: no silent wait
    # Prepared here, one after another, before any pool starts: builtin models are built on first use, and threads
    # racing on first-time imports break them.
    model_paths = {name: kind_of(by_name[name]).prepare(by_name[name], layout) for name in pending}
    plans = {name: [plan_pass(layout, by_name[name], passes[index], fingerprint) for index, fingerprint in todo.items()]
             for name, todo in pending.items()}
    pool_ref = ray.put(load_frozen_problems(layout, DEMO_POOL_ROLE))
    # counted in rows, not shards: a pass's lead shards are smaller than the rest, so shards would skew the ETA
    totals = {name: sum(shard.rows for plan in plans[name] for shard in plan.pending()) for name in pending}
    label = "teachers" if passes[0].mode == "rationale" else "answers"
    progress = PoolProgress(console().progress(label, sum(totals.values()), "rows"), totals)
    errors = {}
    try:
        with ThreadPoolExecutor(max_workers=len(pending)) as threads:
            futures = {name: threads.submit(_run_pool, config, layout, by_name[name], model_paths[name], pool_ref,
                                            plans[name], progress)
                       for name in pending}
            for name, future in futures.items():
                try:
                    for index, manifest in zip(pending[name], future.result()):
                        manifests[index][name] = manifest
                except Exception as err:  # noqa: BLE001 - report every failing teacher, not just the first
                    errors[name] = err
    finally:  # a live line left running would keep redrawing over whatever comes next (an interrupt's traceback)
        progress.close()
    if errors:
        details = "\n".join(f"  {name}: {type(e).__name__}: {e}" for name, e in errors.items())
        raise GenerationError(f"{len(errors)} teacher(s) failed (finished ones and finished shards are kept; "
                              f"rerun to resume):\n{details}")
    return manifests


def _damaged_shards(layout: RunLayout, teacher: TeacherConfig, teacher_pass: TeacherPass, fingerprint: str) -> bool:
    """Check a finished pass's shards before reusing it: a missing or damaged one is named, and the manifest removed
    so the folder is a partial pass of the same settings, resumed as an interrupted one is (those shards are written
    again, and the other shards' failed rows asked again); a stop before the rewrite leaves it to be resumed."""
    if not RunLayout.progress_file(teacher_pass.out_dir(teacher.name)).is_file():
        return False  # no shard layout recorded (written by hand or by an old version): nothing to check against
    plan = plan_pass(layout, teacher, teacher_pass, fingerprint)
    damaged = {s.shard: "missing" for s in plan.shards if not plan.shard_path(s.shard).is_file()} | plan.unsound()
    if not damaged:
        return False
    first, why = min(damaged.items())
    log.warning("teacher %s: %d of %d shards in %s cannot be reused (%s: %s); writing those again",
                teacher.name, len(damaged), len(plan.shards), plan.out_dir, plan.shard_path(first).name, why)
    (plan.out_dir / MANIFEST).unlink(missing_ok=True)
    return True


# ---------------------------------------------------------------- one teacher's actor pool

def _run_pool(config: JobConfig, layout: RunLayout, teacher: TeacherConfig, model_path: str, pool_ref,
              plans: list[PassPlan], progress: "PoolProgress") -> list[dict[str, Any]]:
    """One teacher's pool over the pending shards of all its passes; returns each pass's manifest."""
    import ray

    from tinyllm_ray.metrics import open_sinks
    from tinyllm_ray.teachers.actor import TeacherActor, shard_descriptor
    from tinyllm_ray.teachers.feeding import concurrent_shards

    start = time.time()
    todo = [shard_descriptor(index, shard) for index, plan in enumerate(plans) for shard in plan.pending()]
    if todo:
        log.info("teacher %s: %d shard(s) to write (%s)", teacher.name, len(todo),
                 ", ".join(f"{plan.teacher_pass.mode}s of {len(plan.shards)} shards" for plan in plans))
        # One shard per call (batch_size=1 over shard descriptors), several calls at once per actor: a lost actor's
        # shards are retried on a restarted one (Ray Data restarts actors) and rewritten whole. The output is only a
        # summary row per shard, consumed as it streams: nothing of the dataset is materialised on the driver.
        # As many shards again wait queued at the actor, so the next one starts the moment one finishes instead of
        # after a round trip to the driver (that keeps the engine's batch nearly full: benchmarks/RESULTS.md).
        engine = getattr(teacher, "engine", None)  # a vLLM teacher's; other kinds have none
        in_flight = concurrent_shards(teacher.resources, engine.extra if engine is not None else {})
        summaries = ray.data.from_items(todo).map_batches(
            TeacherActor,
            fn_constructor_kwargs=dict(teacher=teacher, model_path=model_path,
                                       demo_pool=pool_ref, demos=config.prompts.model_dump(mode="json"),
                                       passes=plans),
            batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=teacher.resources.concurrency,
                                               max_tasks_in_flight_per_actor=2 * in_flight,
                                               max_concurrent_calls_per_actor=in_flight,
                                               enable_true_multi_threading=True),
            **kind_of(teacher).remote_args(teacher),
        )
        sinks = [open_sinks(config.metrics, layout.metrics / plan.teacher_pass.stage / teacher.name, config.name,
                            f"{config.name}-{plan.teacher_pass.stage}-{teacher.name}",
                            {"teacher": teacher.name, "mode": plan.teacher_pass.mode})
                 for plan in plans]
        try:
            _follow(summaries, teacher.name, progress, sinks, start)
        finally:
            for sink in sinks:
                sink.close()
    return [_finish(teacher, plan, model_path, start) for plan in plans]


def _follow(summaries, teacher: str, progress: "PoolProgress", sinks: list, start: float) -> None:
    """Consume the per-shard summaries as the actors produce them: the stage's progress and running metrics."""
    done = [{"shards": 0, **{key: 0 for key in PROGRESS_KEYS}} for _ in sinks]
    for summary in rows_as_they_come(summaries):
        index = int(summary["pass"])
        counts = done[index]
        counts["shards"] += 1
        for key in PROGRESS_KEYS:
            counts[key] += int(summary[key])
        elapsed = max(time.time() - start, 1e-9)
        progress.shard_done(teacher, int(summary["rows"]), int(summary["generated_tokens"]))
        log.info("teacher %s: shard %d written (%d rows in %.1f s), %.1f s after its pool started", teacher,
                 int(summary["shard"]), int(summary["rows"]), float(summary["seconds"]), elapsed)
        if summary.get("startup"):
            log.info(startup_text(teacher, json.loads(summary["startup"]), start))
        for warning in str(summary.get("warnings") or "").splitlines():
            log.warning(warning)  # raised in an actor: on the driver it reaches the console (once) and the log
        sinks[index].log({**counts, "problems_per_s": counts["rows"] / elapsed,
                          "generated_tokens_per_s": counts["generated_tokens"] / elapsed,
                          "shard_seconds": float(summary["seconds"])}, step=counts["shards"])


def startup_text(teacher: str, startup: dict[str, float], pool_started: float) -> str:
    """Where an actor's start-up went, from the times it reports (:class:`~tinyllm_ray.teachers.actor.TeacherActor`)
    and when the driver started its pool: scheduling and the worker process's start, the worker's own imports, the
    teacher's build (its imports and engine)."""
    process, constructor, ready = (startup[key] - pool_started
                                   for key in ("process_started", "constructor_started", "ready"))
    return (f"teacher {teacher}: an actor was ready {ready:.1f} s after its pool started (its process started at "
            f"{process:.1f} s, its constructor at {constructor:.1f} s, the teacher's imports and engine build took "
            f"{ready - constructor:.1f} s)")


class PoolProgress:
    """One display for all teachers' pools at once: rows written, each teacher's count (up to three teachers fit
    an 80-column line) and generated tokens a second. Called from every pool's thread."""

    def __init__(self, display: ProgressDisplay, totals: dict[str, int]):
        self.display, self.totals = display, totals
        self.done = dict.fromkeys(totals, 0)
        self.tokens = 0
        self.start = time.time()
        self.lock = threading.Lock()

    def shard_done(self, teacher: str, rows: int, tokens: int) -> None:
        with self.lock:
            self.done[teacher] += rows
            self.tokens += tokens
            each = (" ".join(f"{name} {self.done[name]}/{total}" for name, total in self.totals.items())
                    if len(self.totals) <= 3 else "")
            self.display.update(sum(self.done.values()), teachers=each,
                                speed=rate_text(self.tokens, time.time() - self.start, "tok"))

    def close(self) -> None:
        self.display.close()


def _finish(teacher: TeacherConfig, plan: PassPlan, model_path: str, start: float) -> dict[str, Any]:
    """Check a pass's shards add up and its error budget holds, then write its manifest (last)."""
    stats, nodes = collect_shard_stats(plan)
    if stats["rows"] != plan.num_problems:
        raise GenerationError(f"teacher {teacher.name!r}: {plan.out_dir} has {stats['rows']} rows for "
                              f"{plan.num_problems} problems; rerun with --force to regenerate it")
    rate = stats["errors"] / max(stats["rows"], 1)
    if rate > teacher.max_error_rate:
        raise GenerationError(
            f"teacher {teacher.name!r}: {stats['errors']}/{stats['rows']} rows failed ({rate:.1%} > max_error_rate "
            f"{teacher.max_error_rate:.1%}); rows kept in {plan.out_dir} for `tinyllm-ray inspect`. First error: "
            f"{stats['first_error']}")
    mode = plan.teacher_pass.mode
    kind = kind_of(teacher)
    extra = kind.manifest_fields(teacher, model_path) if kind.manifest_fields else {}
    manifest = write_manifest(
        plan.out_dir, fingerprint=plan.fingerprint, teacher=teacher.model_dump(mode="json"), model_path=model_path,
        mode=mode, counts=stats, shards=len(plan.shards), nodes=nodes, seconds=round(time.time() - start, 2),
        **extra)
    log.info("teacher %s: %d %s rows, %d errors, %d tokens in %.1fs (prompts %d tokens, %d of them from the prefix "
             "cache)", teacher.name, stats["rows"], mode, stats["errors"], stats["generated_tokens"],
             time.time() - start, stats.get("prompt_tokens", 0), stats.get("cached_prompt_tokens", 0))
    return manifest
