"""Recipe: problems -> (Ray Data, one vLLM actor pool per teacher, all pools in parallel) -> rationale Parquet.

Each teacher's output is its own directory with a manifest written last; a rerun reuses every teacher whose
fingerprint (model, prompt, sampling, problems) is unchanged and regenerates only the rest.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from tinyllm_ray.errors import TinyLLMError
from tinyllm_ray import prompts
from tinyllm_ray.config import JobConfig, PromptConfig, TeacherConfig, stable_hash
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.models import resolve_model
from tinyllm_ray.problems import load_frozen_problems, prepare_problems
from tinyllm_ray.schemas import (
    PROBLEM_SCHEMA, RATIONALE_SCHEMA, read_footer, read_manifest, read_rows, read_table, write_manifest, write_table,
)

log = logging.getLogger("tinyllm_ray")


class GenerationError(TinyLLMError, RuntimeError):
    """A teacher's generation failed as a whole (engine crash, too many failed rows, changed config)."""


# ---------------------------------------------------------------- the teacher actor

DEMO_POOL_ROLE = "train"  # teachers' in-context demonstrations come from the frozen train problems


def sampling_dict(teacher: TeacherConfig, mode: str, max_tokens: int | None = None) -> dict[str, Any]:
    """The teacher's sampling for rationales; greedy for answers (teacher accuracy is measured deterministically)."""
    sampling = teacher.sampling.model_dump()
    if max_tokens is not None:
        sampling["max_tokens"] = max_tokens
    if mode == "answer":
        sampling.update(temperature=0.0, top_p=1.0)
    return sampling


def demos_from_pool(pool: pa.Table, problems: list[dict], pool_offset: int | None, k: int, seed: int,
                    sampler: str = "per_problem") -> list[list[dict]]:
    """Each problem's k demonstrations from the Arrow ``pool`` (the train split), as :func:`prompts.sample_demos`
    picks them. ``pool_offset``: where ``problems`` start in the pool, or None for problems from another split."""
    demos = []
    for i, problem in enumerate(problems):
        own = None if pool_offset is None else pool_offset + i
        if own is not None and pool["id"][own].as_py() != problem["id"]:
            raise GenerationError(f"problem {problem['id']!r} is not at row {own} of the demo pool: the frozen "
                                  "problems changed during the run; rerun with --force")
        positions = prompts.demo_positions(len(pool), own, problem["id"], k, seed, sampler)
        # one-row slices: zero-copy and flat in the pool's size (Table.take concatenates its chunks first)
        demos.append([pool.slice(p, 1).to_pylist()[0] for p in positions])
    return demos


class TeacherEngine:
    """A Ray Data actor owning one vLLM engine; turns shards of problems into rationale (or answer) rows.

    Ray Data runs up to ``resources.shards_in_flight`` calls at once in the actor's threads; they share the engine
    through an :class:`EngineLoop`, so it keeps batching across shard boundaries. Rows that fail (prompt too long, a
    request the engine rejects) come back with ``error`` set; an engine that dies raises, which fails the stage.
    """

    def __init__(self, teacher: dict, model_path: str, demo_pool: pa.Table, demos: dict, passes: list[dict]):
        """``demos``: ``config.prompts`` (num_demos, demo_seed, demo_sampler). ``passes``: what shards can ask for,
        by index: role, mode, sampling, problems_path, out_dir of each."""
        import ray
        from vllm import LLM, SamplingParams

        from tinyllm_ray.engine_loop import EngineLoop

        self.teacher = TeacherConfig.model_validate(teacher)
        engine = self.teacher.engine
        kwargs = dict(model=model_path, dtype=engine.dtype, max_model_len=engine.max_model_len,
                      enforce_eager=engine.enforce_eager, tensor_parallel_size=engine.tensor_parallel_size,
                      seed=self.teacher.sampling.seed or 0, **engine.extra)
        if self.teacher.resources.num_gpus_per_actor:
            kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
            if engine.tensor_parallel_size > 1:
                kwargs["distributed_executor_backend"] = "mp"  # the actor already holds all its GPUs
        if engine.kv_cache_memory_bytes:
            kwargs["kv_cache_memory_bytes"] = engine.kv_cache_memory_bytes
        self.tokenizer_lock = threading.Lock()  # calls render in their own threads; the engine loop tokenises too
        self.loop = EngineLoop(lambda: LLM(**kwargs), add_lock=self.tokenizer_lock)  # built in the loop's thread
        self.tokenizer = self.loop.llm.get_tokenizer()
        self.passes = [dict(p, out_dir=Path(p["out_dir"]), params=SamplingParams(**p["sampling"]),
                            sampling_json=json.dumps(p["sampling"], sort_keys=True)) for p in passes]
        self.max_model_len = engine.max_model_len
        self.model_path = model_path
        self.use_chat = self.teacher.chat_template == "auto" and bool(getattr(self.tokenizer, "chat_template", None))
        if not isinstance(demo_pool, pa.Table):  # an ObjectRef: one copy of the pool in the object store
            demo_pool = ray.get(demo_pool)
        # Kept as Arrow, read zero-copy from the object store; each problem slices out only its demos' rows. As Python
        # dicts the pool cost ~6x its Arrow size in every actor, and scanning it cost time per problem.
        self.pool = demo_pool
        self.demos = PromptConfig.model_validate(demos)
        self.node_id = ray.get_runtime_context().get_node_id()

    def render(self, problem: dict, demos: list[dict], mode: str) -> str:
        build = prompts.teacher_forcing_prompt if mode == "rationale" else prompts.answer_prompt
        text = build(problem, demos, self.teacher.instruction)
        if not self.use_chat:
            return text
        messages = [{"role": "system", "content": self.teacher.system_prompt}] if self.teacher.system_prompt else []
        messages.append({"role": "user", "content": text})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def __call__(self, batch: dict) -> dict:
        """Generate whole shards (each row of ``batch`` names one: shard, offset, rows), reading their problems from
        the frozen Parquet file and writing each shard atomically with its stats in the file footer; a retried
        shard just rewrites its file. Returns one small summary row per shard for progress and metrics."""
        summary: dict[str, list] = {key: [] for key in SUMMARY_KEYS}
        for index, shard, offset, count in zip(batch["pass"], batch["shard"], batch["offset"], batch["rows"]):
            start = time.time()
            todo = self.passes[int(index)]
            in_pool = todo["role"] == DEMO_POOL_ROLE  # the demo pool is this very split, already in memory
            rows = (self.pool.slice(int(offset), int(count)) if in_pool
                    else read_rows(todo["problems_path"], int(offset), int(count), PROBLEM_SCHEMA))
            problems = rows.to_pylist()
            table, cached = self.generate(problems, todo, int(offset) if in_pool else None)
            stats = rationale_stats(table.to_pylist(), {p["id"]: p for p in problems})
            stats["cached_prompt_tokens"] = cached
            write_table(table, todo["out_dir"] / shard_file(int(shard)), footer={"stats": stats, "node": self.node_id})
            for key, value in (("pass", int(index)), ("shard", int(shard)), ("rows", stats["rows"]),
                               ("errors", stats["errors"]),
                               ("generated_tokens", stats["generated_tokens"]), ("node", self.node_id),
                               ("seconds", time.time() - start)):
                summary[key].append(value)
        return summary

    def generate(self, problems: list[dict], todo: dict, pool_offset: int | None) -> tuple[pa.Table, int]:
        """The shard's rows, and how many of their prompt tokens vLLM's prefix cache served (not computed)."""
        demos = demos_from_pool(self.pool, problems, pool_offset, self.demos.num_demos, self.demos.demo_seed,
                                self.demos.demo_sampler)
        with self.tokenizer_lock:
            rows = [self._row(p, self.render(p, d, todo["mode"]), todo["sampling_json"])
                    for p, d in zip(problems, demos)]
            # Tokenised here, in the caller's thread, as vLLM would (special tokens added), and handed to the engine
            # as token ids: the engine thread then spends no time tokenising while it could be stepping.
            token_ids = [self.tokenizer.encode(row["prompt"]) for row in rows]
        runnable = []
        for row, ids in zip(rows, token_ids):
            row["num_prompt_tokens"] = len(ids)
            if len(ids) >= self.max_model_len:
                row["error"] = (f"prompt has {len(ids)} tokens, engine.max_model_len is "
                                f"{self.max_model_len}: raise max_model_len or lower prompts.num_demos")
            else:
                runnable.append((row, {"prompt_token_ids": ids, "prompt": row["prompt"]}))
        cached = self._generate(runnable, todo["params"])
        return pa.Table.from_pylist(rows, schema=RATIONALE_SCHEMA), cached

    def _row(self, problem: dict, prompt: str, sampling_json: str) -> dict:
        return dict(id=problem["id"], dataset=problem["dataset"], teacher=self.teacher.name, model=self.teacher.model,
                    prompt=prompt, rationale="", num_prompt_tokens=0, num_generated_tokens=0, finish_reason="error",
                    sampling_params=sampling_json, error=None)

    def _generate(self, runnable: list[tuple[dict, dict]], params) -> int:
        """Fill each row from the engine's output for its prompt (a vLLM ``TokensPrompt``); returns the prompt tokens
        served from the prefix cache."""
        outputs = self.loop.generate([prompt for _, prompt in runnable], params)
        cached = 0
        for (row, _), output in zip(runnable, outputs):
            if isinstance(output, Exception):
                row["error"] = f"{type(output).__name__}: {output}"[:2000]
                continue
            cached += output.num_cached_tokens or 0
            completion = output.outputs[0]
            row.update(rationale=completion.text.strip(), num_generated_tokens=len(completion.token_ids),
                       finish_reason=str(completion.finish_reason or "stop"))
        return cached


# ---------------------------------------------------------------- the recipe

def teacher_fingerprint(config: JobConfig, teacher: TeacherConfig, problems_fingerprint: str, mode: str) -> str:
    """What the rationales depend on: resources, pool sizes and error budgets are deliberately left out."""
    relevant = teacher.model_dump(mode="json", exclude={"resources", "max_error_rate", "rationale_prefix"})
    relevant["engine"] = {k: v for k, v in relevant["engine"].items()
                          if k in {"dtype", "max_model_len", "extra"}}
    # the default sampler is left out, so rationales written before it was a setting keep their fingerprint
    prompt_settings = config.prompts.model_dump(mode="json", exclude={"task_prefix"})
    if prompt_settings["demo_sampler"] == "per_problem":
        del prompt_settings["demo_sampler"]
    return stable_hash({"teacher": relevant, "prompts": prompt_settings, "problems": problems_fingerprint,
                        "mode": mode})


PROGRESS = "_progress.json"
SUMMARY_KEYS = ("pass", "shard", "rows", "errors", "generated_tokens", "node", "seconds")


@dataclass(frozen=True)
class TeacherPass:
    """One output every teacher writes: rationales over the train split, or answers over the eval split. A teacher's
    passes share one actor pool, so an engine starts once however many outputs it makes."""

    role: str                  # the frozen problems split
    out_root: Path             # <out_root>/<teacher name>/ holds the shards and the manifest
    mode: str                  # rationale | answer
    max_tokens: int | None = None
    force: bool = False

    @property
    def stage(self) -> str:
        return "generate" if self.mode == "rationale" else "evaluate_teachers"


def rationale_pass(layout: RunLayout, force: bool = False) -> TeacherPass:
    return TeacherPass("train", layout.rationales, "rationale", force=force)


def answer_pass(config: JobConfig, layout: RunLayout) -> TeacherPass:
    """Teachers asked without the gold answer, for their accuracy (independent of the student)."""
    return TeacherPass("eval", layout.teacher_answers, "answer", max_tokens=config.evaluation.max_new_tokens)


def shard_file(shard: int) -> str:
    return f"shard-{shard:06d}.parquet"


def _plan(teacher: TeacherConfig, out_dir: Path, fingerprint: str, force: bool) -> dict[str, Any] | None:
    """The finished manifest to reuse, or None to (re)run; partial output of the same config is resumed."""
    manifest = read_manifest(out_dir)
    progress_file = out_dir / PROGRESS
    started = json.loads(progress_file.read_text()) if progress_file.is_file() else None
    recorded = (manifest or started or {}).get("fingerprint")
    if force:
        shutil.rmtree(out_dir, ignore_errors=True)
        return None
    if recorded is not None and recorded != fingerprint:
        state = "finished" if manifest else "partial"
        raise GenerationError(
            f"teacher {teacher.name!r}: {out_dir} holds {state} output of a different model/prompt/sampling config. "
            "Rename the teacher to keep both, or pass --force to regenerate it.")
    return manifest


def run_teachers(config: JobConfig, layout: RunLayout, teachers: list[TeacherConfig],
                 passes: list[TeacherPass]) -> list[dict[str, dict[str, Any]]]:
    """Write every pass of every teacher whose output is missing, partial or forced (all teachers' pools at once;
    each teacher's passes through one pool); return each pass's manifests by teacher name."""
    import ray

    problems_fingerprint = (read_manifest(layout.problems) or {}).get("fingerprint", "")
    manifests: list[dict[str, dict[str, Any]]] = [{} for _ in passes]
    todo: dict[str, list[tuple[int, Path, str]]] = {}
    for teacher in teachers:
        for index, job in enumerate(passes):
            out_dir = job.out_root / teacher.name
            fingerprint = teacher_fingerprint(config, teacher, problems_fingerprint, job.mode)
            manifest = _plan(teacher, out_dir, fingerprint, job.force)
            if manifest:
                log.info("teacher %s: reusing %s (%d rows)", teacher.name, out_dir, manifest["counts"]["rows"])
                manifests[index][teacher.name] = manifest
            else:
                todo.setdefault(teacher.name, []).append((index, out_dir, fingerprint))
    if not todo:
        return manifests
    pool_ref = ray.put(load_frozen_problems(layout, DEMO_POOL_ROLE))
    by_name = {t.name: t for t in teachers}
    # Resolve (and, for builtins, build) models once here: threads racing on first-time imports break them.
    model_paths = {by_name[name].model: resolve_model(by_name[name].model) for name in todo}
    with ThreadPoolExecutor(max_workers=len(todo)) as threads:
        futures = {name: threads.submit(_run_one, config, layout, by_name[name], model_paths[by_name[name].model],
                                        pool_ref, [(passes[i], out_dir, fp) for i, out_dir, fp in jobs], position)
                   for position, (name, jobs) in enumerate(todo.items())}
        errors = {}
        for name, future in futures.items():
            try:
                for (index, _, _), manifest in zip(todo[name], future.result()):
                    manifests[index][name] = manifest
            except Exception as err:  # noqa: BLE001 - report every failing teacher, not just the first
                errors[name] = err
    if errors:
        details = "\n".join(f"  {name}: {type(e).__name__}: {e}" for name, e in errors.items())
        raise GenerationError(f"{len(errors)} teacher(s) failed (finished ones and finished shards are kept; "
                              f"rerun to resume):\n{details}")
    return manifests


def plan_shards(num_problems: int, shard_size: int) -> list[dict[str, int]]:
    """Shard n covers problems ``n * shard_size`` onwards; the layout is recorded so resumes keep it."""
    return [{"shard": shard, "offset": offset, "rows": min(shard_size, num_problems - offset)}
            for shard, offset in enumerate(range(0, num_problems, shard_size))]


def _shard_layout(num_problems: int, out_dir: Path, fingerprint: str, shard_size: int) -> list[dict[str, int]]:
    """Record (or read back) the shard layout of this teacher's output folder."""
    progress_file = out_dir / PROGRESS
    if progress_file.is_file():
        shard_size = json.loads(progress_file.read_text())["shard_size"]
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        progress_file.write_text(json.dumps({"fingerprint": fingerprint, "shard_size": shard_size}))
    return plan_shards(num_problems, shard_size)


def _run_one(config: JobConfig, layout: RunLayout, teacher: TeacherConfig, model_path: str, pool_ref,
             jobs: list[tuple[TeacherPass, Path, str]], position: int) -> list[dict[str, Any]]:
    """One teacher's pool over the pending shards of all its passes; returns each pass's manifest."""
    import pyarrow.parquet as pq
    import ray

    from tinyllm_ray.metrics import open_sinks
    from tinyllm_ray.runtime import teacher_env

    start = time.time()
    resources = teacher.resources
    on_gpu = resources.num_gpus_per_actor > 0
    if not on_gpu and not teacher.engine.kv_cache_memory_bytes:
        raise GenerationError(f"teacher {teacher.name!r} runs on CPU: set engine.kv_cache_memory_bytes "
                              "(e.g. 268435456); vLLM-CPU cannot size its KV cache itself")
    plans, pending = [], []
    for index, (job, out_dir, fingerprint) in enumerate(jobs):
        problems_path = layout.problem_file(job.role)
        num_problems = pq.read_metadata(problems_path).num_rows
        shards = _shard_layout(num_problems, out_dir, fingerprint, resources.shard_size)
        plans.append((problems_path, num_problems, shards))
        pending += [{"pass": index, **s} for s in shards if not (out_dir / shard_file(s["shard"])).is_file()]
    if pending:
        log.info("teacher %s: %d shard(s) to write (%s)", teacher.name, len(pending),
                 ", ".join(f"{job.mode}s of {len(plan[2])} shards" for (job, _, _), plan in zip(jobs, plans)))
        remote_args: dict[str, Any] = {"runtime_env": {"env_vars": teacher_env(on_gpu, teacher.engine.allocator)}}
        if resources.accelerator_type:
            remote_args["accelerator_type"] = resources.accelerator_type
        if resources.custom_resources:
            remote_args["resources"] = dict(resources.custom_resources)
        passes = [dict(role=job.role, mode=job.mode, sampling=sampling_dict(teacher, job.mode, job.max_tokens),
                       problems_path=str(plan[0]), out_dir=str(out_dir))
                  for (job, out_dir, _), plan in zip(jobs, plans)]
        # One shard per call (batch_size=1 over shard descriptors), several calls at once per actor: a lost actor's
        # shards are retried on a restarted one (Ray Data restarts actors) and rewritten whole. The output is only a
        # summary row per shard, consumed as it streams: nothing of the dataset is materialised on the driver.
        # As many shards again wait queued at the actor, so the next one starts the moment one finishes instead of
        # after a round trip to the driver (tiny model: mean engine batch 22 -> 31 of 32 sequences).
        in_flight = resources.shards_in_flight
        summaries = ray.data.from_items(pending).map_batches(
            TeacherEngine,
            fn_constructor_kwargs=dict(teacher=teacher.model_dump(mode="json"), model_path=model_path,
                                       demo_pool=pool_ref, demos=config.prompts.model_dump(mode="json"),
                                       passes=passes),
            batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=resources.concurrency, max_tasks_in_flight_per_actor=2 * in_flight,
                                               max_concurrent_calls_per_actor=in_flight,
                                               enable_true_multi_threading=True),
            num_gpus=resources.num_gpus_per_actor, num_cpus=resources.num_cpus_per_actor, **remote_args,
        )
        sinks = [open_sinks(config.metrics, layout.metrics / job.stage / teacher.name, config.name,
                            f"{config.name}-{job.stage}-{teacher.name}", {"teacher": teacher.name, "mode": job.mode})
                 for job, _, _ in jobs]
        try:
            _follow(summaries, len(pending), teacher.name, position, sinks, start)
        finally:
            for sink in sinks:
                sink.close()
    return [_finish(teacher, job, out_dir, fingerprint, model_path, *plan, start)
            for (job, out_dir, fingerprint), plan in zip(jobs, plans)]


def _finish(teacher: TeacherConfig, job: TeacherPass, out_dir: Path, fingerprint: str, model_path: str,
            problems_path: Path, num_problems: int, shards: list[dict[str, int]], start: float) -> dict[str, Any]:
    """Check a pass's shards add up and its error budget holds, then write its manifest (last)."""
    stats, nodes = _collect_shard_stats(out_dir, problems_path, shards)
    if stats["rows"] != num_problems:
        raise GenerationError(f"teacher {teacher.name!r}: {out_dir} has {stats['rows']} rows for {num_problems} "
                              "problems; rerun with --force to regenerate it")
    rate = stats["errors"] / max(stats["rows"], 1)
    if rate > teacher.max_error_rate:
        raise GenerationError(
            f"teacher {teacher.name!r}: {stats['errors']}/{stats['rows']} rows failed ({rate:.1%} > max_error_rate "
            f"{teacher.max_error_rate:.1%}); rows kept in {out_dir} for `tinyllm-ray inspect`. First error: "
            f"{stats['first_error']}")
    manifest = write_manifest(
        out_dir, fingerprint=fingerprint, teacher=teacher.model_dump(mode="json"), model_path=model_path,
        mode=job.mode, counts=stats, shards=len(shards), nodes=nodes, seconds=round(time.time() - start, 2))
    log.info("teacher %s: %d %s rows, %d errors, %d tokens in %.1fs (prompts %d tokens, %d of them from the prefix "
             "cache)", teacher.name, stats["rows"], job.mode, stats["errors"], stats["generated_tokens"],
             time.time() - start, stats.get("prompt_tokens", 0), stats.get("cached_prompt_tokens", 0))
    return manifest


def _follow(summaries, total: int, teacher: str, position: int, sinks: list, start: float) -> None:
    """Consume the per-shard summaries as the actors produce them: a progress bar and running metrics per pass."""
    from tqdm import tqdm

    done = [{"shards": 0, "rows": 0, "errors": 0, "generated_tokens": 0} for _ in sinks]
    with tqdm(total=total, desc=f"{teacher} shards", unit="shard", position=position) as bar:
        for summary in summaries.iter_rows():
            index = int(summary["pass"])
            counts = done[index]
            counts["shards"] += 1
            for key in ("rows", "errors", "generated_tokens"):
                counts[key] += int(summary[key])
            elapsed = max(time.time() - start, 1e-9)
            bar.update(1)
            sinks[index].log({**counts, "problems_per_s": counts["rows"] / elapsed,
                              "generated_tokens_per_s": counts["generated_tokens"] / elapsed,
                              "shard_seconds": float(summary["seconds"])}, step=counts["shards"])


def _collect_shard_stats(out_dir: Path, problems_path: Path,
                         shards: list[dict[str, int]]) -> tuple[dict[str, Any], list[str]]:
    """Sum the stats every shard file carries in its footer (one shard in memory at a time, for files written
    without a footer) and list the nodes that generated them."""
    parts, nodes = [], set()
    for shard in shards:
        path = out_dir / shard_file(shard["shard"])
        if not path.is_file():
            raise GenerationError(f"{path} is missing after generation; rerun to resume")
        footer = read_footer(path)
        if "stats" not in footer:
            problems = read_rows(problems_path, shard["offset"], shard["rows"], PROBLEM_SCHEMA).to_pylist()
            footer["stats"] = rationale_stats(read_table(path, RATIONALE_SCHEMA).to_pylist(),
                                              {p["id"]: p for p in problems})
        parts.append(footer["stats"])
        if footer.get("node"):
            nodes.add(footer["node"])
    return merge_stats(parts), sorted(nodes)


def rationale_stats(rows: list[dict[str, Any]], problems_by_id: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Counts for the manifest and `inspect`: failures, quality flags (quality.py), token totals. Additive over
    shards (:func:`merge_stats`)."""
    from tinyllm_ray.quality import summarize_flags

    errors = [r["error"] for r in rows if r["error"]]
    flags = summarize_flags({**r, **{k: problems_by_id[r["id"]][k] for k in ("answer_index", "choices")}}
                            if r["id"] in problems_by_id else r for r in rows)
    return {
        "rows": len(rows),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        **{k: v for k, v in flags.items() if k != "checked"},
        "prompt_tokens": int(sum(r["num_prompt_tokens"] for r in rows)),
        "generated_tokens": int(sum(r["num_generated_tokens"] for r in rows)),
    }


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Shard stats in shard order -> the teacher's: counts add up, ``first_error`` is the first shard's."""
    merged: dict[str, Any] = {"first_error": None}
    for part in parts:
        for key, value in part.items():
            if key == "first_error":
                merged[key] = merged[key] or value
            else:
                merged[key] = merged.get(key, 0) + value
    merged.setdefault("rows", 0)
    merged.setdefault("errors", 0)
    return merged


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
    return run_teachers(config, layout, teachers, passes)[0]
