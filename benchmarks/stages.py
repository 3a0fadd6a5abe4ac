"""The real `generate` and `train` stages, timed: generation from its shard files' write times, training from a
timestamp at every optimiser step inside each worker."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import MemSampler


STEADY_AFTER = 1 / 3  # the steady window starts once this share of the rows is out (start-up and lead shards before)


def steady_window(results: list[tuple[float, int, int, int, int]],
                  after: float = STEADY_AFTER) -> dict[str, Any] | None:
    """The steady state of a run from its results as they came, ``(time, rows, prompt tokens, generated tokens,
    cached prompt tokens)`` each: the window from the result that takes the rows out past ``after`` of all to the last
    result, with the work of the results after it. The same rule for the pipeline's shards and a baseline's batches,
    so both windows hold the same rows when their results are the same size. None without two results after it."""
    results = sorted(results)
    total = sum(r[1] for r in results)
    done = 0
    for index, result in enumerate(results):
        done += result[1]
        if done >= after * total:
            later = results[index + 1:]
            if len(later) < 2:
                return None
            return {"from": result[0], "seconds": round(results[-1][0] - result[0], 2),
                    "problems": sum(r[1] for r in later), "prompt_tokens": sum(r[2] for r in later),
                    "generated_tokens": sum(r[3] for r in later), "cached_prompt_tokens": sum(r[4] for r in later),
                    "first_result": index + 2}
    return None


def run_pipeline(config) -> dict[str, Any]:
    """The real `generate` stage; start-up vs steady state from the shard files' write times."""
    import pyarrow.parquet as pq

    from tinyllm_ray.generate import generate
    from tinyllm_ray.layout import RunLayout
    from tinyllm_ray.schemas import read_footer

    layout = RunLayout.of(config.output_dir)
    with MemSampler() as mem:
        t0 = time.time()
        manifests = generate(config, force=True)
        stage_s = time.time() - t0
    out: dict[str, Any] = {"stage_seconds": round(stage_s, 2), "memory": mem.result(),
                           "teacher_actor": mem.teacher_actor_env, "teachers": {}}
    for teacher in config.teachers:
        manifest = manifests[teacher.name]
        shards = sorted(layout.teacher_dir(teacher.name).glob("shard-*.parquet"), key=lambda p: p.stat().st_mtime)
        info = []
        for shard in shards:
            table = pq.read_table(shard, columns=["num_prompt_tokens", "num_generated_tokens"])
            info.append({"mtime": shard.stat().st_mtime, "rows": table.num_rows,
                         "prompt": int(sum(table.column(0).to_pylist())),
                         "gen": int(sum(table.column(1).to_pylist())),
                         "cached": read_footer(shard).get("stats", {}).get("cached_prompt_tokens", 0)})
        counts = manifest["counts"]
        entry = {"manifest_seconds": manifest["seconds"], "rows": counts["rows"], "errors": counts["errors"],
                 "prompt_tokens": counts["prompt_tokens"], "generated_tokens": counts["generated_tokens"],
                 "cached_prompt_tokens": counts.get("cached_prompt_tokens", 0), "shards": len(info),
                 "first_shard_after_s": round(info[0]["mtime"] - t0, 2) if info else None}
        if teacher.resources.concurrency == 1:
            steady = steady_window([(i["mtime"], i["rows"], i["prompt"], i["gen"], i["cached"]) for i in info])
            if steady:
                entry["steady"] = steady
                # stage start -> the results before the window, minus their time at the steady rate: Ray Data
                # set-up + actor/engine start
                before = counts["rows"] - steady["problems"]
                entry["startup_estimate_s"] = round(steady["from"] - t0 - before * steady["seconds"]
                                                    / max(steady["problems"], 1), 2)
        out["teachers"][teacher.name] = entry
    return out


def make_timed_loop(log_path: str):
    """A Train worker loop for ``train(config, loop=...)``: the product's ``setup -> fit -> export``, with every
    optimiser step (``fit``'s ``on_step``) written to a per-rank JSONL file: its end time, the non-pad tokens trained
    on so far and the training thread's involuntary context switches. A closure, so cloudpickle ships it by value
    (Ray workers need not import this module)."""

    def timed_loop(spec) -> None:
        import json as _json
        import time as _time

        import ray.train
        import torch

        from tinyllm_ray import train_worker

        def preempted() -> int:  # involuntary context switches of this (the training) thread so far
            with open("/proc/thread-self/status") as status:
                return int(status.read().split("nonvoluntary_ctxt_switches:")[1].split()[0])

        rank = ray.train.get_context().get_world_rank()
        with open(f"{log_path}.rank{rank}.jsonl", "a") as handle:
            def note(**fields) -> None:
                handle.write(_json.dumps({"t": _time.time(), **fields}) + "\n")
                handle.flush()

            note(event="enter", torch_threads=torch.get_num_threads())
            try:
                state = train_worker.setup(spec)
                if state is not None:
                    train_worker.fit(state, on_step=lambda record: note(
                        event="step", t=record.finished_at, tokens=record.train_tokens, preempted=preempted()))
                    train_worker.export(state)
            finally:
                note(event="exit")

    return timed_loop


def run_train_stage(config, log_dir: Path, label: str) -> dict[str, Any]:
    """The real `train` stage (force=True) with :func:`make_timed_loop`, timed from the driver and in each worker."""
    from tinyllm_ray.train import train

    log_dir.mkdir(parents=True, exist_ok=True)
    with MemSampler() as mem:
        t0 = time.time()
        manifest = train(config, force=True, loop=make_timed_loop(str(log_dir / label)))
        total = time.time() - t0
    per_rank = [rank_summary(file, t0, total) for file in sorted(log_dir.glob(f"{label}.rank*.jsonl"))]
    out: dict[str, Any] = {"stage_seconds": round(total, 2), "workers": config.training.num_workers,
                           "optimizer_steps": manifest.get("optimizer_steps"), "memory": mem.result(),
                           "ranks": per_rank}
    if per_rank and all("steady_seconds" in r for r in per_rank):
        seconds = max(r["steady_seconds"] for r in per_rank)
        tokens = sum(r["steady_tokens"] for r in per_rank)
        out["steady_tokens_per_s"] = round(tokens / seconds, 1)
        out["steady_step_s"] = round(seconds / per_rank[0]["steady_steps"], 3)
        out["median_step_s"] = per_rank[0]["median_step_s"]
        out["startup_to_first_step_s"] = per_rank[0]["first_step_after_s"]
        out["preemptions_per_step"] = per_rank[0].get("preemptions_per_step")
    return out


def rank_summary(file: Path, t0: float, total: float) -> dict[str, Any]:
    """One rank's step log (``enter``, one ``step`` event per optimiser step, ``exit``) as timings from ``t0``."""
    events = [json.loads(ln) for ln in file.read_text().splitlines() if ln.strip()]
    enter = next(e for e in events if e["event"] == "enter")
    steps = [e for e in events if e["event"] == "step"]
    exit_ = next((e for e in events if e["event"] == "exit"), events[-1])
    rank = {"torch_threads": enter["torch_threads"], "enter_after_s": round(enter["t"] - t0, 2), "steps": len(steps)}
    if steps:
        rank["first_step_after_s"] = round(steps[0]["t"] - t0, 2)
        rank["first_step_tokens"] = steps[0]["tokens"]
        rank["after_last_step_s"] = round(total - (steps[-1]["t"] - t0), 2)
        rank["export_s"] = round(exit_["t"] - steps[-1]["t"], 2)
    if len(steps) >= 3:
        # steady state: exclude the first step (and its warm-up); event k ends step k
        rank["steady_steps"] = len(steps) - 1
        rank["steady_seconds"] = round(steps[-1]["t"] - steps[0]["t"], 3)
        rank["steady_tokens"] = steps[-1]["tokens"] - steps[0]["tokens"]
        rank["step_seconds"] = [round(b["t"] - a["t"], 3) for a, b in zip(steps, steps[1:])]
        rank["median_step_s"] = round(statistics.median(rank["step_seconds"]), 3)
        if "preempted" in steps[0]:
            rank["preemptions_per_step"] = round((steps[-1]["preempted"] - steps[0]["preempted"])
                                                 / rank["steady_steps"], 2)
    return rank
