"""Job configs built in code, the synthetic datasets they read, and the one local Ray cluster of a benchmark run."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DEMO_TRAIN, DEMO_VALID

MODELS = {
    # the tiny preset's teacher, with the demo's prompt settings and a longer rationale
    "tiny": dict(model="builtin:tiny-llama", max_tokens=32, max_model_len=1024, kv=64 * 2**20, instruction="",
                 student_max_target=32),
    # the demo preset's greedy teacher (instruction + chat template)
    "smollm2": dict(model="builtin:smollm2-135m", max_tokens=64, max_model_len=2048, kv=128 * 2**20,
                    instruction="Explain briefly why the given answer is correct.", student_max_target=64),
}

# How many times the gen section repeats the demo's 48 train problems: the tiny model's engine does a shard in a
# fraction of a second, so it needs many more shards than SmolLM2 for its steady state to span seconds.
GEN_REPEATS = {"smollm2": 2, "tiny": 20}


def demo_train_rows() -> list[dict[str, Any]]:
    """The embedded demo's train problems, the source every synthetic dataset here repeats."""
    return [json.loads(ln) for ln in DEMO_TRAIN.read_text().splitlines() if ln.strip()]


def write_problems(folder: Path, base: int, repeat: int) -> Path:
    """train.jsonl = the first ``base`` demo train problems repeated ``repeat`` times under new ids; demo valid."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = demo_train_rows()[:base]
    with open(folder / "train.jsonl", "w") as out:
        for k in range(repeat):
            for row in rows:
                out.write(json.dumps({**row, "id": f"{row['id']}-r{k:03d}"}) + "\n")
    shutil.copy(DEMO_VALID, folder / "valid.jsonl")
    return folder


def teacher_spec(model_key: str, name: str, shard_size: int, concurrency: int = 1, cpus: float = 1,
                 in_flight: int = 2) -> dict[str, Any]:
    m = MODELS[model_key]
    return {"name": name, "model": m["model"], "rationale_prefix": f"{name}: ", "instruction": m["instruction"],
            "sampling": {"temperature": 0.0, "max_tokens": m["max_tokens"]},
            "engine": {"dtype": "float32", "max_model_len": m["max_model_len"], "enforce_eager": True,
                       "kv_cache_memory_bytes": m["kv"]},
            "resources": {"concurrency": concurrency, "shard_size": shard_size, "shards_in_flight": in_flight,
                          "num_cpus_per_actor": cpus}}


def job_config(out_dir: Path, model_key: str, data: dict[str, Any], teachers: list[dict[str, Any]],
               training: dict[str, Any] | None = None, ray_num_cpus: int = 8, prompts: dict[str, Any] | None = None):
    from tinyllm_ray.config import JobConfig

    return JobConfig.model_validate({
        "name": f"bench-{model_key}", "output_dir": str(out_dir), "ray_num_cpus": ray_num_cpus, "data": data,
        "prompts": {"num_demos": 2, "demo_seed": 0, **(prompts or {})},
        "teachers": teachers,
        "student": {"model": MODELS[model_key]["model"], "max_input_tokens": 256,
                    "max_target_tokens": MODELS[model_key]["student_max_target"]},
        "training": {"num_workers": 1, "cpus_per_worker": 1, "zero_stage": "auto", "micro_batch_size": 4,
                     "learning_rate": 1e-4, "epochs": 50, "max_steps": 5, "checkpoint_every_steps": None,
                     "log_every_steps": 1, **(training or {})},
        "evaluation": {"teachers": False},
    })


def gen_data(tmp: Path, quick: bool, model_key: str) -> tuple[dict[str, Any], int]:
    """(data config, train problems) of the gen section, reused by the train section: the demo's 48 train problems
    repeated under new ids (so other demos in each prompt) for a full run, so that steady state spans many shards."""
    if quick:
        return {"format": "demo", "max_train_problems": 16, "max_eval_problems": 8}, 16
    repeats = GEN_REPEATS[model_key]
    folder = write_problems(tmp / f"gen_data_{repeats}", 48, repeats)
    return {"format": "jsonl", "path": str(folder), "max_eval_problems": 8}, 48 * repeats


def gen_for_training(model_key: str, tmp: Path, quick: bool, training: dict[str, Any]):
    """A config whose rationales exist (generated once, reused by later stages with the same fingerprint)."""
    from tinyllm_ray.generate import generate

    config = job_config(tmp / f"gen_{model_key}", model_key, gen_data(tmp, quick, model_key)[0],
                        [teacher_spec(model_key, "greedy", 8 if quick else 16)], training=training)
    ensure_ray()
    generate(config)  # reuses the gen section's rationales when present
    return config


def with_training(config, **settings):
    """``config`` with some training settings replaced (validated again)."""
    return type(config).model_validate({**config.model_dump(),
                                        "training": {**config.training.model_dump(), **settings}})


_RAY_STARTED: dict[str, float] = {}


def ensure_ray(num_cpus: int = 8) -> float:
    """One local Ray cluster for the whole benchmark, with the product's worker env; returns its start seconds."""
    import ray

    if not ray.is_initialized():
        from tinyllm_ray.runtime import local_cluster_runtime_env

        env = local_cluster_runtime_env(VLLM_CACHE_ROOT=os.environ["VLLM_CACHE_ROOT"],
                                        TORCHINDUCTOR_CACHE_DIR=os.environ["TORCHINDUCTOR_CACHE_DIR"])
        t = time.time()
        for attempt in range(3):
            # On an overloaded machine the raylet can miss Ray's fixed 30 s registration window: retry.
            try:
                ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=env, log_to_driver=True)
                break
            except Exception as err:  # noqa: BLE001
                print(f"[bench] ray.init failed (attempt {attempt + 1}/3): {err}", flush=True)
                ray.shutdown()
                if attempt == 2:
                    raise
        _RAY_STARTED["attempts"] = attempt + 1
        from ray.data import DataContext

        DataContext.get_current().use_datasource_v2 = False
        _RAY_STARTED["seconds"] = round(time.time() - t, 2)
    return _RAY_STARTED.get("seconds", 0.0)
