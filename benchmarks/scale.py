"""Section ``scale``: generation as the dataset grows (1x/10x/100x) and as teachers are added (parallel pools), the
teacher actor's cost of picking demonstrations as the train split grows, training with 1 vs 2 workers, and the
driver's peak memory while the training set is built and streamed at 10,000 / 100,000 / 1,000,000 synthetic problems
(``python -m benchmarks.scale`` runs that part alone)."""

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
    out["training_stream"] = training_stream_memory(tmp, quick)
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


STREAM_SIZES = (10_000, 100_000, 1_000_000)
STREAM_SIZES_QUICK = (2_000, 20_000)

# What train() does before TorchTrainer.fit (a local cluster as runtime.connect starts it, the set built, tokenised
# with the tiny student's tokenizer at the default limits, and streamed), in a fresh interpreter whose peak RSS is the
# driver's; a task stands in for the Train worker draining its shard, so the rows never pass through the driver.
_STREAM_WORK = """
import os, ray
from pathlib import Path
from ray.data import DataContext
from tinyllm_ray.config import RationaleFilter, StudentConfig
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.models import resolve_model
from tinyllm_ray.training_data import tasks_for
from tinyllm_ray.training_stream import build_training_set, training_dataset
from tinyllm_ray.training_tokens import Tokenisation
student = StudentConfig(model={student!r})
tokens = Tokenisation(resolve_model(student.model), tuple(tasks_for("predict: ", 1.0, [("t1", "explain: ", 1.0),
                      ("t2", "rationale: ", 1.0)])), student.max_input_tokens, student.max_target_tokens)
ray.init(num_cpus=max(4, 2 * (os.cpu_count() or 1)), include_dashboard=False)
context = DataContext.get_current()
context.use_datasource_v2, context.enable_progress_bars = False, False
context.execution_options.preserve_order = True
after_init = status("VmRSS")
@ray.remote
def drain(shard):
    rows = tokens = 0
    for batch in shard.iter_batches(batch_size=256, batch_format="numpy"):
        rows += len(batch["id"])
        tokens += sum(len(ids) for ids in batch["target_ids__rationale__t1"] if ids is not None)
    return rows, tokens
t_build = time.time()
built = build_training_set(RunLayout.of({root!r}), ["t1", "t2"], Path({root!r}) / "set", tokens, 1.0, 0,
                           RationaleFilter())
build_s = time.time() - t_build
shard = training_dataset(built).streaming_split(1, equal=True)[0]
rows, target_tokens = ray.get(drain.remote(shard))
assert rows == built.rows, (rows, built.rows)
print(json.dumps({{"rss_after_ray_init_mb": round(after_init / 1024), "build_s": round(build_s, 1),
                  "usable_t1": built.counts["t1"]["usable"], "target_tokens_t1": int(target_tokens),
                  "set_mb": round(sum(os.path.getsize(f) for f in built.files) / 2**20, 1)}}))
ray.shutdown()
"""


# What train() did before (same inputs, fresh interpreter): the whole split joined in the driver, then shuffled.
_WHOLE_SPLIT_WORK = """
import numpy as np
from tinyllm_ray.config import RationaleFilter
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.problems import load_frozen_problems
from tinyllm_ray.train import load_rationales
from tinyllm_ray.training_data import build_training_table
layout = RunLayout.of({root!r})
table, counts = build_training_table(load_frozen_problems(layout, "train"),
                                     {{t: load_rationales(layout, t) for t in ("t1", "t2")}}, RationaleFilter())
table = table.take(np.random.default_rng(0).permutation(table.num_rows))
rows = table.num_rows
"""


def training_stream_memory(tmp, quick: bool, whole_split: bool = False) -> list[dict[str, Any]]:
    """The driver's peak RSS while ``training_stream`` builds (joins and tokenises) and streams the training set of
    two teachers, at each size: it should stay flat (synthetic rationale files written directly, no generation).
    ``whole_split`` also measures the whole-split join in one process on the same inputs (what ``train`` did
    before)."""
    import shutil

    from benchmarks.driver import _peak_rss

    out = []
    for size in (STREAM_SIZES_QUICK if quick else STREAM_SIZES):
        root = tmp / f"scale_stream_{size}"
        inputs_s = write_stream_inputs(root, size)
        print(f"[bench] scale: driver memory streaming {size} problems x 2 teachers", flush=True)
        out.append({"problems": size, "write_inputs_s": inputs_s,
                    **_peak_rss("", _STREAM_WORK.format(root=str(root), student=MODELS["tiny"]["model"]))})
        if whole_split:
            print(f"[bench] scale: driver memory joining {size} problems x 2 teachers in one process", flush=True)
            out[-1]["whole_split"] = _peak_rss("", _WHOLE_SPLIT_WORK.format(root=str(root)))
        shutil.rmtree(root, ignore_errors=True)
    return out


def write_stream_inputs(root, size: int) -> float:
    """Frozen problems (row groups of 1,024) and two teachers' rationale shards of 1,024 rows (prompts of a realistic
    length, ~1,500 chars) for ``size`` synthetic problems; returns the seconds it took."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tinyllm_ray.layout import RunLayout
    from tinyllm_ray.problems import PROBLEM_ROW_GROUP
    from tinyllm_ray.schemas import PROBLEM_SCHEMA, RATIONALE_SCHEMA, write_manifest

    t = time.perf_counter()
    layout = RunLayout.of(str(root))
    layout.problems.mkdir(parents=True, exist_ok=True)
    demo = demo_train_rows()
    block = pa.Table.from_pylist([{**row, "dataset": "demo", "split": "train", "context": None,
                                   "answer_index": row["choices"].index(row["answer"])}
                                  for row in (demo[i % len(demo)] for i in range(PROBLEM_ROW_GROUP))],
                                 schema=PROBLEM_SCHEMA)
    prompt, rationale = "Question: ... " * 110, "Because the answer follows from the question. " * 6
    shard = pa.Table.from_pylist([{"id": "", "dataset": "demo", "teacher": "t", "model": "m", "prompt": prompt,
                                   "rationale": rationale, "num_prompt_tokens": 300, "num_generated_tokens": 60,
                                   "finish_reason": "stop", "sampling_params": "{}", "error": None}
                                  for _ in range(PROBLEM_ROW_GROUP)], schema=RATIONALE_SCHEMA)
    for teacher in ("t1", "t2"):
        layout.teacher_dir(teacher).mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(layout.problem_file("train"), PROBLEM_SCHEMA) as writer:
        for start in range(0, size, PROBLEM_ROW_GROUP):
            count = min(PROBLEM_ROW_GROUP, size - start)
            ids = pa.array([f"s{i}" for i in range(start, start + count)], pa.string())
            writer.write_table(block.slice(0, count).set_column(0, PROBLEM_SCHEMA.field("id"), ids),
                               row_group_size=PROBLEM_ROW_GROUP)
            for teacher in ("t1", "t2"):
                rows = shard.slice(0, count).set_column(0, RATIONALE_SCHEMA.field("id"), ids)
                rows = rows.set_column(2, RATIONALE_SCHEMA.field("teacher"), pa.array([teacher] * count, pa.string()))
                pq.write_table(rows, layout.teacher_dir(teacher) / f"shard-{start // PROBLEM_ROW_GROUP:06d}.parquet")
    write_manifest(layout.problems, fingerprint="bench")
    for teacher in ("t1", "t2"):
        write_manifest(layout.teacher_dir(teacher), rows=size)
    return round(time.perf_counter() - t, 1)


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
        for r in s.get("training_stream", []):
            rows.append(("scale driver memory", f"training set of {r['problems']} problems x 2 teachers",
                         fmt(r["seconds"], 2), "", "", "",
                         f"driver peak RSS {r['peak_rss_mb']} MB (after ray.init {r['rss_after_ray_init_mb']} MB; "
                         f"build {r['build_s']} s, set {r.get('set_mb')} MB)"))
            if "whole_split" in r:
                rows.append(("scale driver memory", f"whole-split join of {r['problems']} problems x 2 teachers",
                             fmt(r["whole_split"]["seconds"], 2), "", "", "",
                             f"driver peak RSS {r['whole_split']['peak_rss_mb']} MB"))
        for r in s.get("train_workers", []):
            rows.append(("scale train", f"{r['workers']} worker(s), ZeRO-{r.get('zero_stage')}",
                         fmt(r["stage_seconds"], 2), fmt(r.get("steady_tokens_per_s")) + " train tok/s", "", "",
                         f"step {r.get('steady_step_s')} s, first step after {r.get('startup_to_first_step_s')} s, "
                         f"ray workers {r['memory']['ray_workers_total_rss_mb']} MB"))
        return rows


if __name__ == "__main__":
    # the training-stream memory part alone: python -m benchmarks.scale [--quick] [--whole-split] [SIZE ...]
    import json
    import sys
    import tempfile
    from pathlib import Path

    flags = {"--quick", "--whole-split"}
    args = [a for a in sys.argv[1:] if a not in flags]
    if args:
        STREAM_SIZES = STREAM_SIZES_QUICK = tuple(int(a) for a in args)
    with tempfile.TemporaryDirectory(prefix="tinyllm-scale-") as folder:
        for result in training_stream_memory(Path(folder), "--quick" in sys.argv, "--whole-split" in sys.argv):
            print(json.dumps(result), flush=True)
