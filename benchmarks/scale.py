"""Section ``scale``: generation as the dataset grows (1x/10x/100x) and as teachers are added (parallel pools), the
teacher actor's cost of picking demonstrations as the train split grows, and training with 1 vs 2 workers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from benchmarks.common import Context, Row, SectionResult, fmt, gen_row, model_params, rates, wait_quiet
from benchmarks.jobs import MODELS, demo_train_rows, ensure_ray, gen_for_training, job_config, teacher_spec, \
    write_problems
from benchmarks.stages import run_pipeline, run_train_stage

SECTION = "scale"
PER_MODEL = False


def run(ctx: Context) -> "ScaleResult":
    from tinyllm_ray.models import resolve_model

    tmp, quick, peak = ctx.tmp, ctx.quick, ctx.peak_gflops
    ensure_ray()
    base = 16 if quick else 48
    params = model_params(resolve_model(MODELS["tiny"]["model"]))
    out: dict[str, Any] = {"dataset": [], "teachers": [], "train_workers": []}
    for repeat in ((1, 4) if quick else (1, 10, 100)):
        data_dir = write_problems(tmp / f"scale_data_{repeat}", base, repeat)
        config = job_config(tmp / f"scale_ds_{repeat}", "tiny", {"format": "jsonl", "path": str(data_dir)},
                            [teacher_spec("tiny", "greedy", 16)])
        print(f"[bench] scale: dataset {repeat}x ({base * repeat} problems)", flush=True)
        pipe = run_pipeline(config)
        t = pipe["teachers"]["greedy"]
        out["dataset"].append({"scale": repeat, "problems": t["rows"], "shards": t["shards"],
                               **rates(pipe["stage_seconds"], t["rows"], t["prompt_tokens"], t["generated_tokens"],
                                       params, peak, t["cached_prompt_tokens"]),
                               "startup_estimate_s": t.get("startup_estimate_s"), "memory": pipe["memory"]})
    teacher_data = write_problems(tmp / "scale_data_teachers", base, 2 if quick else 10)
    for count in ((1, 2) if quick else (1, 2, 4)):
        config = job_config(tmp / f"scale_teachers_{count}", "tiny", {"format": "jsonl", "path": str(teacher_data)},
                            [teacher_spec("tiny", f"t{i}", 16) for i in range(count)])
        print(f"[bench] scale: {count} teacher(s)", flush=True)
        pipe = run_pipeline(config)
        teachers = pipe["teachers"].values()
        rows = sum(t["rows"] for t in teachers)
        prompt = sum(t["prompt_tokens"] for t in teachers)
        gen = sum(t["generated_tokens"] for t in teachers)
        cached = sum(t["cached_prompt_tokens"] for t in teachers)
        out["teachers"].append({"teachers": count, "problems_per_teacher": rows // count,
                                **rates(pipe["stage_seconds"], rows, prompt, gen, params, peak, cached),
                                "memory": pipe["memory"]})
    out["demo_pool"] = [demo_pool_cost(base * repeat) for repeat in ((1, 10) if quick else (100, 1000, 10000))]
    steps = 3 if quick else 20
    for workers in (1, 2):  # training.zero_stage auto: ZeRO-0 with one worker, ZeRO-2 with two
        config = gen_for_training("tiny", tmp, quick, {"num_workers": workers, "micro_batch_size": 2 if quick else 4,
                                                       "max_steps": steps})
        waited = wait_quiet()
        print(f"[bench] scale: training with {workers} worker(s)", flush=True)
        result = run_train_stage(config, tmp / "train_logs", f"scale-w{workers}")
        out["train_workers"].append({"workers": workers, "zero_stage": config.training.resolved_zero_stage,
                                     "waited_for_quiet_s": waited, **{k: result.get(k) for k in (
            "stage_seconds", "steady_tokens_per_s", "steady_step_s", "startup_to_first_step_s", "memory")},
            "ranks": result["ranks"]})
    return ScaleResult(SECTION, out)


def demo_pool_cost(size: int, shards: int = 50) -> dict[str, Any]:
    """A teacher actor's cost of picking each problem's demonstrations from a train split of ``size`` problems
    (chunked in row groups of 1,024, as the frozen Parquet file reads back): it should not grow with ``size``."""
    import pyarrow as pa

    from tinyllm_ray.generation_plan import demos_from_pool
    from tinyllm_ray.problems import PROBLEM_ROW_GROUP

    rows = demo_train_rows()
    pool = pa.Table.from_pylist([{**rows[i % len(rows)], "id": f"p{i}"} for i in range(size)])
    pool = pa.Table.from_batches(pool.to_batches(max_chunksize=PROBLEM_ROW_GROUP))
    offsets = [(size - 16) * k // max(shards - 1, 1) for k in range(shards)]  # shards spread over the split
    t = time.perf_counter()
    for offset in offsets:
        demos_from_pool(pool, pool.slice(offset, 16).to_pylist(), offset, 2, 0)
    return {"pool": size, "arrow_mb": round(pool.nbytes / 2**20, 1),
            "ms_per_shard_of_16": round((time.perf_counter() - t) / shards * 1e3, 2)}


@dataclass(frozen=True)
class ScaleResult(SectionResult):
    def table_rows(self) -> list[Row]:
        s = self.data
        rows: list[Row] = []
        for r in s.get("dataset", []):
            rows.append(gen_row("scale data", f"{r['scale']}x ({r['problems']} problems)", r,
                                f"driver {r['memory']['driver_rss_mb']} MB, ray workers "
                                f"{r['memory']['ray_workers_total_rss_mb']} MB "
                                f"(max {r['memory']['ray_worker_max_rss_mb']})"))
        for r in s.get("teachers", []):
            rows.append(gen_row("scale teachers", f"{r['teachers']} x {r['problems_per_teacher']} problems", r,
                                f"driver {r['memory']['driver_rss_mb']} MB, ray workers "
                                f"{r['memory']['ray_workers_total_rss_mb']} MB"))
        for r in s.get("demo_pool", []):
            rows.append(("scale demo pool", f"train split of {r['pool']} problems", "", "", "", "",
                         f"{r['ms_per_shard_of_16']} ms per shard of 16 to pick the demos; "
                         f"pool {r['arrow_mb']} MB Arrow"))
        for r in s.get("train_workers", []):
            rows.append(("scale train", f"{r['workers']} worker(s), ZeRO-{r.get('zero_stage')}",
                         fmt(r["stage_seconds"], 2), fmt(r.get("steady_tokens_per_s")) + " train tok/s", "", "",
                         f"step {r.get('steady_step_s')} s, first step after {r.get('startup_to_first_step_s')} s, "
                         f"ray workers {r['memory']['ray_workers_total_rss_mb']} MB"))
        return rows
