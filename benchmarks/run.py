"""Side-by-side speed and memory benchmarks of tinyllm_ray (issue 5).

    python -m benchmarks.run [--quick] [--only gen,train,scale,startup,driver] [--models tiny,smollm2] [--out DIR]

Sections (each one is independent; a failing section is recorded in the JSON and the others still run):

* ``peak``    fp32 matmul FLOP/s of this machine (torch, all cores): the yardstick for every FLOP/s fraction below.
* ``startup`` ``tinyllm-ray run tiny`` as a subprocess: time to the first rationale shard on disk and to the
              first ``[train] step`` line.
* ``gen``     teacher generation, per model: (a) the real ``generate`` stage (Ray Data + vLLM actor), (b) the same
              engine args / prompts / SamplingParams on a bare in-process ``vllm.LLM``, (c) a plain transformers
              batched ``generate`` loop (left padding, greedy, same max_tokens and stop string).
* ``train``   student training: the real ``train`` stage (Ray Train, 1 worker, DeepSpeed ZeRO-0 and ZeRO-2) vs a
              plain single-process PyTorch loop over the same Collator batches, same optimizer and steps, in
              back-to-back rounds on glibc's allocator and on jemalloc.
* ``scale``   generation as the dataset grows and as teachers are added; the actor's demo picking as the train
              split grows; training with 1 vs 2 workers.
* ``driver``  the driver's peak memory validating 200,000 input problems and building their training table.

Nothing here asserts a timing: the numbers go to a table and a JSON file (``--out``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("gen", "train", "scale", "startup", "driver")
DEMO_TRAIN = REPO / "tinyllm_ray" / "demo_data" / "demo_train.jsonl"
DEMO_VALID = REPO / "tinyllm_ray" / "demo_data" / "demo_valid.jsonl"


def set_env(tmp: Path) -> None:
    """The environment the product sets for CPU teachers and Ray workers, plus private vLLM/inductor caches."""
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from tinyllm_ray.runtime import ONEDNN_CACHE_CAPACITY

    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)  # the bare engine as the actors
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp / "vllm_cache"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp / "inductor_cache"))


# ---------------------------------------------------------------- memory sampling

class MemSampler:
    """Peak RSS of this (driver) process and of its descendant Ray processes, sampled in a thread.

    Every process of the local Ray cluster this driver started (raylet, GCS, workers, actors) descends from it, so
    other people's Ray clusters on the same machine are not counted. "workers" are processes titled ``ray::...``
    (task workers, actors, Train workers); sums of RSS count shared pages more than once (an upper bound).
    """

    def __init__(self, interval: float = 0.25):
        import psutil

        self.psutil, self.interval = psutil, interval
        self.me = psutil.Process()
        self.peak = {"driver_rss_mb": 0.0, "ray_workers_total_rss_mb": 0.0, "ray_worker_max_rss_mb": 0.0,
                     "all_descendants_total_rss_mb": 0.0}
        self.largest_worker = ""
        self.teacher_actor_env: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        mb = 1 / 2**20
        try:
            self.peak["driver_rss_mb"] = max(self.peak["driver_rss_mb"], self.me.memory_info().rss * mb)
            children = self.me.children(recursive=True)
        except self.psutil.Error:
            return
        total, workers, largest = 0.0, 0.0, (0.0, "")
        for child in children:
            try:
                rss = child.memory_info().rss * mb
                title = " ".join(child.cmdline())[:120]
            except self.psutil.Error:
                continue
            total += rss
            if title.startswith("ray::"):
                workers += rss
                largest = max(largest, (rss, title))
                if "TeacherEngine" in title and not self.teacher_actor_env:
                    try:
                        self.teacher_actor_env = {
                            "OMP_NUM_THREADS": child.environ().get("OMP_NUM_THREADS"),
                            "cpu_affinity": child.cpu_affinity(), "title": title,
                            "jemalloc_loaded": any("libjemalloc" in m.path for m in child.memory_maps())}
                    except self.psutil.Error:
                        pass
        self.peak["all_descendants_total_rss_mb"] = max(self.peak["all_descendants_total_rss_mb"], total)
        self.peak["ray_workers_total_rss_mb"] = max(self.peak["ray_workers_total_rss_mb"], workers)
        if largest[0] > self.peak["ray_worker_max_rss_mb"]:
            self.peak["ray_worker_max_rss_mb"], self.largest_worker = largest

    def result(self) -> dict[str, Any]:
        out = {k: round(v, 1) for k, v in self.peak.items()}
        out["largest_worker"] = self.largest_worker
        return out


# ---------------------------------------------------------------- helpers

def wait_quiet(limit: float = 30.0, busy_percent: float = 25.0) -> float:
    """Wait (up to ``limit`` s) until the machine's CPU use falls under ``busy_percent``: the previous variant's Ray
    workers exit and free memory for several seconds, which would otherwise be charged to the next variant."""
    import psutil

    t = time.time()
    while time.time() - t < limit and psutil.cpu_percent(interval=1.0) >= busy_percent:
        pass
    return round(time.time() - t, 1)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    import psutil

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in flags]
    except OSError:
        isa = []
    return {"nproc": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu_model": cpu_model, "isa": isa, "platform": platform.platform(), "python": platform.python_version()}


def versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "vllm", "ray", "deepspeed", "transformers"):
        try:
            out[name] = __import__(name).__version__
        except Exception as err:  # noqa: BLE001
            out[name] = f"unavailable: {err}"
    return out


def matmul_peak(n: int = 2048, reps: int = 8) -> dict[str, Any]:
    """fp32 matmul FLOP/s with torch on all cores: best and median of ``reps`` n x n products."""
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    torch.set_num_threads(threads_before)
    times.sort()
    flops = 2 * n**3
    return {"n": n, "threads": os.cpu_count(), "best_gflops": round(flops / times[0] / 1e9, 1),
            "median_gflops": round(flops / times[len(times) // 2] / 1e9, 1)}


def model_params(path: str) -> int:
    """Parameter count (tied embeddings once) without allocating weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in model.parameters())


def rates(seconds: float, problems: int, prompt_tokens: int, gen_tokens: int, params: int,
          peak_gflops: float | None, cached_tokens: int = 0) -> dict[str, Any]:
    """Throughput and achieved FLOP/s; prompt tokens served from vLLM's prefix cache were not computed."""
    seconds = max(seconds, 1e-9)
    flops = 2 * params * (prompt_tokens - cached_tokens + gen_tokens) / seconds
    return {"seconds": round(seconds, 2), "problems": problems, "prompt_tokens": prompt_tokens,
            "cached_prompt_tokens": cached_tokens, "generated_tokens": gen_tokens,
            "gen_tokens_per_s": round(gen_tokens / seconds, 1),
            "problems_per_s": round(problems / seconds, 3), "gflops": round(flops / 1e9, 2),
            "fraction_of_peak": round(flops / (peak_gflops * 1e9), 4) if peak_gflops else None}


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


# ---------------------------------------------------------------- job configs built in code

MODELS = {
    # the tiny preset's teacher, with the demo's prompt settings and a longer rationale
    "tiny": dict(model="builtin:tiny-llama", max_tokens=32, max_model_len=1024, kv=64 * 2**20, instruction="",
                 student_max_target=32),
    # the demo preset's greedy teacher (instruction + chat template)
    "smollm2": dict(model="builtin:smollm2-135m", max_tokens=64, max_model_len=2048, kv=128 * 2**20,
                    instruction="Explain briefly why the given answer is correct.", student_max_target=64),
}


def teacher_spec(model_key: str, name: str, batch_size: int, concurrency: int = 1, cpus: float = 1,
                 in_flight: int = 2) -> dict[str, Any]:
    m = MODELS[model_key]
    return {"name": name, "model": m["model"], "rationale_prefix": f"{name}: ", "instruction": m["instruction"],
            "sampling": {"temperature": 0.0, "max_tokens": m["max_tokens"]},
            "engine": {"dtype": "float32", "max_model_len": m["max_model_len"], "enforce_eager": True,
                       "kv_cache_memory_bytes": m["kv"]},
            "resources": {"concurrency": concurrency, "batch_size": batch_size, "shards_in_flight": in_flight,
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


# ---------------------------------------------------------------- generation

def render_prompts(config, teacher, tokenizer) -> tuple[list[str], list[str]]:
    """(ids, prompts): exactly TeacherEngine.render over the frozen train problems (demos, chat template...)."""
    from tinyllm_ray import prompts

    from tinyllm_ray.problems import load_frozen_problems
    from tinyllm_ray.layout import RunLayout

    problems = load_frozen_problems(RunLayout.of(config.output_dir), "train").to_pylist()
    use_chat = teacher.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
    out = []
    for problem in problems:
        demos = prompts.sample_demos(problems, problem["id"], config.prompts.num_demos, config.prompts.demo_seed,
                                     config.prompts.demo_sampler)
        text = prompts.teacher_forcing_prompt(problem, demos, teacher.instruction)
        if use_chat:
            messages = [{"role": "system", "content": teacher.system_prompt}] if teacher.system_prompt else []
            messages.append({"role": "user", "content": text})
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        out.append(text)
    return [p["id"] for p in problems], out


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
        skip = teacher.resources.shards_in_flight
        if len(info) > skip and teacher.resources.concurrency == 1:
            # One actor works on `skip` shards at once, so the first `skip` finish close together. Steady state is
            # the window from the skip-th write to the last, which holds the work of the shards after the first
            # `skip` (the next shard starts as soon as one finishes).
            steady_s = info[-1]["mtime"] - info[skip - 1]["mtime"]
            later = info[skip:]
            entry["steady"] = {"seconds": round(steady_s, 2), "problems": sum(i["rows"] for i in later),
                               "prompt_tokens": sum(i["prompt"] for i in later),
                               "cached_prompt_tokens": sum(i["cached"] for i in later),
                               "generated_tokens": sum(i["gen"] for i in later), "first_shard": skip + 1}
            # stage start -> the first `skip` shards written, minus their time at the steady rate: Ray Data set-up
            # + actor/engine start
            first = sum(i["rows"] for i in info[:skip]) * steady_s / max(entry["steady"]["problems"], 1)
            entry["startup_estimate_s"] = round(info[skip - 1]["mtime"] - t0 - first, 2)
        out["teachers"][teacher.name] = entry
    return out


def run_bare_vllm(config, teacher, model_path: str) -> dict[str, Any]:
    """The same engine args, prompts and SamplingParams as TeacherEngine, on a bare in-process vllm.LLM."""
    import torch
    from vllm import LLM, SamplingParams

    from tinyllm_ray.generate import sampling_dict

    engine = teacher.engine
    sampling = sampling_dict(teacher, "rationale")
    kwargs = dict(model=model_path, dtype=engine.dtype, max_model_len=engine.max_model_len,
                  enforce_eager=engine.enforce_eager, tensor_parallel_size=engine.tensor_parallel_size,
                  seed=sampling.get("seed") or 0, kv_cache_memory_bytes=engine.kv_cache_memory_bytes, **engine.extra)
    t = time.time()
    llm = LLM(**kwargs)
    init_s = time.time() - t
    params = SamplingParams(**sampling)
    ids, prompts_ = render_prompts(config, teacher, llm.get_tokenizer())
    batch = teacher.resources.batch_size
    out: dict[str, Any] = {"engine_init_seconds": round(init_s, 2), "torch_threads": torch.get_num_threads(),
                           "engine_kwargs": {k: v for k, v in kwargs.items() if k != "model"}}
    texts = []
    # shard-sized calls (what one shard per call gave), calls as large as the pipeline keeps in flight, and
    # everything in one call (the engine's best case on this data)
    variants = {"shard_batches": batch, "engine_batches": batch * teacher.resources.shards_in_flight,
                "one_call": len(prompts_)}
    for label, size in variants.items():
        if label == "engine_batches" and size == batch:
            continue
        t = time.time()
        outputs, batch_seconds = [], []
        for start in range(0, len(prompts_), size):
            tb = time.time()
            outputs += llm.generate(prompts_[start:start + size], params, use_tqdm=False)
            batch_seconds.append(time.time() - tb)
        seconds = time.time() - t
        out[label] = {"batch_size": size, "seconds": seconds, "problems": len(outputs),
                      "prompt_tokens": sum(len(o.prompt_token_ids) for o in outputs),
                      "cached_prompt_tokens": sum(o.num_cached_tokens or 0 for o in outputs),
                      "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
                      "batch_seconds": [round(x, 3) for x in batch_seconds]}
        if label != "one_call" and len(batch_seconds) >= 2:
            # like the pipeline's "steady": batches 2..n (the first call pays the engine's first-forward warm-up)
            rest = outputs[size:]
            out[f"{label}_steady"] = {
                "batch_size": size, "seconds": sum(batch_seconds[1:]), "problems": len(rest),
                "prompt_tokens": sum(len(o.prompt_token_ids) for o in rest),
                "cached_prompt_tokens": sum(o.num_cached_tokens or 0 for o in rest),
                "generated_tokens": sum(len(o.outputs[0].token_ids) for o in rest)}
        texts = [o.outputs[0].text.strip() for o in outputs]
    del llm
    gc.collect()
    out["texts"] = dict(zip(ids, texts))
    return out


def run_hf(config, teacher, model_path: str, subset: int, batch_size: int) -> dict[str, Any]:
    """Plain transformers batched greedy generate (left padding), same prompts, max_tokens and stop string."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    t = time.time()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    load_s = time.time() - t
    ids, prompts_ = render_prompts(config, teacher, tokenizer)
    ids, prompts_ = ids[:subset], prompts_[:subset]
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    sampling = teacher.sampling
    prompt_tokens = gen_tokens = 0
    texts = []
    t = time.time()
    with torch.inference_mode():
        for start in range(0, len(prompts_), batch_size):
            enc = tokenizer(prompts_[start:start + batch_size], return_tensors="pt", padding=True)
            kwargs = dict(max_new_tokens=sampling.max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            if sampling.stop:
                kwargs.update(stop_strings=list(sampling.stop), tokenizer=tokenizer)
            generated = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1]:]
            prompt_tokens += int(enc["attention_mask"].sum())
            for row in generated.tolist():
                n = next((i + 1 for i, tok in enumerate(row) if tok in stops), len(row))
                gen_tokens += n
                text = tokenizer.decode(row[:n], skip_special_tokens=True)
                for stop in sampling.stop:  # vLLM leaves the stop string out of its text
                    text = text.split(stop, 1)[0]
                texts.append(text)
    seconds = time.time() - t
    del model
    gc.collect()
    return {"model_load_seconds": round(load_s, 2), "torch_threads": torch.get_num_threads(), "subset": len(prompts_),
            "batch_size": batch_size, "seconds": seconds, "problems": len(prompts_), "prompt_tokens": prompt_tokens,
            "generated_tokens": gen_tokens, "texts": dict(zip(ids, texts))}


# How many times the gen section repeats the demo's 48 train problems: the tiny model's engine does a shard in ~0.1 s,
# so it needs many more shards than SmolLM2 for its steady state to span seconds rather than one.
GEN_REPEATS = {"smollm2": 2, "tiny": 20}


def gen_data(tmp: Path, quick: bool, model_key: str) -> tuple[dict[str, Any], int]:
    """(data config, train problems) of the gen section, reused by the train section: the demo's 48 train problems
    repeated under new ids (so other demos in each prompt) for a full run, so that steady state spans many shards."""
    if quick:
        return {"format": "demo", "max_train_problems": 16, "max_eval_problems": 8}, 16
    repeats = GEN_REPEATS[model_key]
    folder = write_problems(tmp / f"gen_data_{repeats}", 48, repeats)
    return {"format": "jsonl", "path": str(folder), "max_eval_problems": 8}, 48 * repeats


def bench_gen(model_key: str, tmp: Path, quick: bool, peak: float | None, hf_subset: int) -> dict[str, Any]:
    from tinyllm_ray.models import resolve_model

    data, problems = gen_data(tmp, quick, model_key)
    batch = 8 if quick else 16
    config = job_config(tmp / f"gen_{model_key}", model_key, data,
                        # one teacher: its actor gets every core (Ray gives it num_cpus threads), as the bare
                        # engine and the transformers loop do
                        [teacher_spec(model_key, "greedy", batch, cpus=os.cpu_count() or 1)])
    teacher = config.teachers[0]
    model_path = resolve_model(teacher.model)
    params = model_params(model_path)
    out: dict[str, Any] = {"model": teacher.model, "params": params, "problems": problems, "shard_batch": batch,
                           "shards_in_flight": teacher.resources.shards_in_flight,
                           "max_tokens": teacher.sampling.max_tokens, "ray_init_seconds": ensure_ray()}

    def pipeline(cfg=config) -> dict[str, Any]:
        pipe = run_pipeline(cfg)
        t = pipe["teachers"][teacher.name]
        result = {"stage": rates(pipe["stage_seconds"], t["rows"], t["prompt_tokens"], t["generated_tokens"],
                                 params, peak, t["cached_prompt_tokens"]),
                  "manifest_seconds": t["manifest_seconds"], "startup_estimate_s": t.get("startup_estimate_s"),
                  "first_shard_after_s": t["first_shard_after_s"], "shards": t["shards"],
                  "memory": pipe["memory"], "teacher_actor": pipe["teacher_actor"]}
        if "steady" in t:
            s = t["steady"]
            result["steady"] = {**rates(s["seconds"], s["problems"], s["prompt_tokens"], s["generated_tokens"],
                                        params, peak, s["cached_prompt_tokens"]), "first_shard": s["first_shard"]}
        return result

    print(f"[bench] gen {model_key}: pipeline", flush=True)
    out["pipeline"] = pipeline()
    print(f"[bench] gen {model_key}: bare vLLM", flush=True)
    bare = run_bare_vllm(config, teacher, model_path)
    out["bare_vllm"] = {"engine_init_seconds": bare["engine_init_seconds"], "torch_threads": bare["torch_threads"],
                        "engine_kwargs": bare["engine_kwargs"]}
    for label in ("shard_batches", "shard_batches_steady", "engine_batches", "engine_batches_steady", "one_call"):
        if label not in bare:
            continue
        b = bare[label]
        out["bare_vllm"][label] = {"batch_size": b["batch_size"], **rates(
            b["seconds"], b["problems"], b["prompt_tokens"], b["generated_tokens"], params, peak,
            b["cached_prompt_tokens"])}
    def texts_written(cfg) -> dict[str, str]:
        """id -> rationale of what the pipeline wrote for ``cfg``, to compare the other variants' texts with."""
        from tinyllm_ray.layout import RunLayout
        from tinyllm_ray.schemas import RATIONALE_SCHEMA, read_table

        table = read_table(RunLayout.of(cfg.output_dir).teacher_dir(teacher.name), RATIONALE_SCHEMA)
        return dict(zip(table.column("id").to_pylist(), table.column("rationale").to_pylist()))

    pipeline_text = texts_written(config)
    same = sum(pipeline_text.get(i) == text for i, text in bare["texts"].items())
    out["bare_vllm"]["identical_to_pipeline"] = f"{same}/{len(bare['texts'])}"
    def transformers(cfg, texts: dict[str, str]) -> dict[str, Any]:
        print(f"[bench] gen {model_key}: transformers generate on {hf_subset} problems", flush=True)
        hf = run_hf(cfg, teacher, model_path, hf_subset, batch)
        same = sum(texts.get(i) == text.strip() for i, text in hf["texts"].items())
        return {"model_load_seconds": hf["model_load_seconds"], "torch_threads": hf["torch_threads"],
                "subset": hf["subset"], "batch_size": hf["batch_size"],
                **rates(hf["seconds"], hf["problems"], hf["prompt_tokens"], hf["generated_tokens"], params, peak),
                "identical_to_pipeline": f"{same}/{len(hf['texts'])}"}

    out["transformers"] = transformers(config, pipeline_text)
    if not quick:
        # the pipeline again after the bare engine and transformers: the comparison is bracketed against this VM's
        # drift (its speed changes by tens of percent between runs), as the training section does
        print(f"[bench] gen {model_key}: pipeline again (bracketing the bare engine)", flush=True)
        out["pipeline_after"] = pipeline()
        if (os.cpu_count() or 1) > 1:
            # one engine thread fewer than cores: the actor's own work (rendering, tokenising, Parquet writes, Ray)
            # and the driver's then have a core the engine's OpenMP team does not wait on
            print(f"[bench] gen {model_key}: pipeline, one core left to the actor's own work", flush=True)
            threads = (os.cpu_count() or 1) - 1
            fewer = job_config(tmp / f"gen_{model_key}_threads", model_key, data,
                               [teacher_spec(model_key, "greedy", batch, cpus=threads)])
            out["pipeline_core_free"] = {"engine_threads": threads, **pipeline(fewer)}
        # prompts.demo_sampler "fixed": every prompt starts with the same demonstrations, which vLLM's prefix cache
        # computes once; transformers runs the same prompts (its own folder: the rationales' fingerprint differs)
        fixed = job_config(tmp / f"gen_{model_key}_fixed", model_key, data, [teacher.model_dump(mode="json")],
                           prompts={"demo_sampler": "fixed"})
        print(f"[bench] gen {model_key}: pipeline, fixed demos", flush=True)
        out["fixed_demos"] = {"pipeline": pipeline(fixed)}
        out["fixed_demos"]["transformers"] = transformers(fixed, texts_written(fixed))
    return out


# ---------------------------------------------------------------- training

def make_timed_loop(log_path: str):
    """The real train_loop_per_worker, with every optimiser step timestamped into a per-rank JSONL file.

    The loop calls ray.train.report() only with checkpoints, so the hooks sit on DeepSpeed's ``engine.step`` (the
    end of a step; the benchmark uses no gradient accumulation) and on ``Collator.grouped`` (the non-pad tokens the
    step trains on). A closure so cloudpickle ships it by value (Ray workers need not import this module).
    """

    def timed_loop(cfg):
        import json as _json
        import time as _time

        import ray.train
        import torch
        from deepspeed.runtime.engine import DeepSpeedEngine

        from tinyllm_ray.train import train_loop_per_worker
        from tinyllm_ray.training_data import Collator

        rank = ray.train.get_context().get_world_rank()
        handle = open(f"{log_path}.rank{rank}.jsonl", "a")
        tokens = [0]

        def note(**fields):
            handle.write(_json.dumps({"t": _time.time(), **fields}) + "\n")
            handle.flush()

        def preempted():  # involuntary context switches of this (the training) thread so far
            with open("/proc/thread-self/status") as status:
                return int(status.read().split("nonvoluntary_ctxt_switches:")[1].split()[0])

        note(event="enter", torch_threads=torch.get_num_threads())
        original_step, original_grouped = DeepSpeedEngine.step, Collator.grouped

        def step(self, *args, **kwargs):
            result = original_step(self, *args, **kwargs)
            note(event="step", tokens=tokens[0], preempted=preempted())
            return result

        def grouped(self, *args, **kwargs):
            groups = original_grouped(self, *args, **kwargs)
            tokens[0] += sum(int(g["attention_mask"].sum()) for g in groups)
            return groups

        DeepSpeedEngine.step, Collator.grouped = step, grouped
        try:
            train_loop_per_worker(cfg)
        finally:
            DeepSpeedEngine.step, Collator.grouped = original_step, original_grouped
            note(event="exit")
            handle.close()

    return timed_loop


def run_train_stage(config, log_dir: Path, label: str) -> dict[str, Any]:
    """The real `train` stage (force=True), timed from the driver and from inside each worker."""
    import tinyllm_ray.train as train_module

    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = str(log_dir / label)
    original = train_module.train_loop_per_worker
    train_module.train_loop_per_worker = make_timed_loop(log_path)
    try:
        with MemSampler() as mem:
            t0 = time.time()
            manifest = train_module.train(config, force=True)
            total = time.time() - t0
    finally:
        train_module.train_loop_per_worker = original
    ranks = sorted(log_dir.glob(f"{label}.rank*.jsonl"))
    per_rank = []
    for file in ranks:
        events = [json.loads(ln) for ln in file.read_text().splitlines() if ln.strip()]
        enter = next(e for e in events if e["event"] == "enter")
        steps = [e for e in events if e["event"] == "step"]
        exit_ = next((e for e in events if e["event"] == "exit"), events[-1])
        rank = {"torch_threads": enter["torch_threads"], "enter_after_s": round(enter["t"] - t0, 2),
                "steps": len(steps)}
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
        per_rank.append(rank)
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


def training_batches(config) -> tuple[list[dict[str, list]], str, list]:
    """Rank 0's micro-batches for a 1-worker run, in the order train() feeds them (seeded permutation)."""
    import numpy as np

    from tinyllm_ray.problems import load_frozen_problems
    from tinyllm_ray.layout import RunLayout
    from tinyllm_ray.models import resolve_model
    from tinyllm_ray.train import load_rationales
    from tinyllm_ray.training_data import build_training_table, take_fraction, tasks_for

    layout = RunLayout.of(config.output_dir)
    teachers = config.distilled_teachers()
    # exactly train()'s table: the same data fraction and rationale filter
    problems = take_fraction(load_frozen_problems(layout, "train"), config.training.data_fraction,
                             config.training.seed)
    table, _ = build_training_table(problems, {t.name: load_rationales(layout, t.name) for t in teachers},
                                    config.training.rationale_filter)
    table = table.take(np.random.default_rng(config.training.seed).permutation(table.num_rows))
    rows = table.to_pydict()
    mb = config.training.micro_batch_size
    batches = [{k: v[i:i + mb] for k, v in rows.items()} for i in range(0, table.num_rows - mb + 1, mb)]
    tasks = tasks_for(config.prompts.task_prefix, config.training.answer_weight,
                      [(t.name, t.rationale_prefix, config.alpha_for(t.name)) for t in teachers])
    return batches, resolve_model(config.student.model), tasks


def padding_waste(config) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from tinyllm_ray.training_data import Collator

    batches, model_path, tasks = training_batches(config)
    collate = Collator(AutoTokenizer.from_pretrained(model_path), tasks, False, config.student.max_input_tokens,
                       config.student.max_target_tokens)
    out: dict[str, Any] = {"micro_batch_size": config.training.micro_batch_size, "batches": len(batches)}
    # one padded batch per micro-batch (length_groups 1) against what training does (training.length_groups)
    for groups in sorted({1, config.training.length_groups}):
        real = total = seqs = 0
        for raw in batches:
            for group in collate.grouped(raw, groups):
                mask = group["attention_mask"]
                real += int(mask.sum())
                total += mask.numel()
                seqs += mask.shape[0]
        out[f"length_groups_{groups}"] = {"sequences": seqs, "real_tokens": real, "padded_tokens": total,
                                          "pad_fraction": round(1 - real / max(total, 1), 3)}
    out["pad_fraction"] = out[f"length_groups_{config.training.length_groups}"]["pad_fraction"]
    return out


def run_plain_loop(config, steps: int, threads: int) -> dict[str, Any]:
    """Single-process PyTorch: same model, Collator batches, torch AdamW + warm-up schedule, clipping at 1.0
    (DeepSpeed's gradient_clipping), same loss functions and number of steps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tinyllm_ray.losses import multi_task_loss, per_sequence_loss
    from tinyllm_ray.training_data import Collator

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.time()
        batches, model_path, tasks = training_batches(config)
        training = config.training
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        torch.manual_seed(training.seed)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate,
                                      weight_decay=training.weight_decay)
        warmup = training.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
        collate = Collator(tokenizer, tasks, False, config.student.max_input_tokens,
                           config.student.max_target_tokens)
        weights = torch.tensor([t.weight for t in tasks])
        startup = time.time() - t0
        times, tokens, preempted = [], [], []
        for raw in (batches * (steps // max(len(batches), 1) + 1))[:steps]:
            with open("/proc/thread-self/status") as status:  # as the Train worker's timed loop counts them
                preempted.append(int(status.read().split("nonvoluntary_ctxt_switches:")[1].split()[0]))
            t = time.time()
            groups = collate.grouped(raw, training.length_groups)  # the same length-grouped batches as train()
            losses = [per_sequence_loss(model(input_ids=g["input_ids"], attention_mask=g["attention_mask"]).logits,
                                        g["labels"], shift=True) for g in groups]
            loss, _ = multi_task_loss(torch.cat(losses), torch.cat([g["task_ids"] for g in groups]), weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.time() - t)
            tokens.append(sum(int(g["attention_mask"].sum()) for g in groups))
        del model, optimizer
        gc.collect()
    finally:
        torch.set_num_threads(before)
    out = {"torch_threads": threads, "startup_s": round(startup, 2), "steps": len(times),
           "first_step_s": round(times[0], 3), "step_seconds": [round(x, 3) for x in times[1:]]}
    if len(times) >= 3:
        out["steady_tokens_per_s"] = round(sum(tokens[1:]) / sum(times[1:]), 1)
        out["steady_step_s"] = round(sum(times[1:]) / (len(times) - 1), 3)
        out["median_step_s"] = round(statistics.median(times[1:]), 3)
        out["preemptions_per_step"] = round((preempted[-1] - preempted[1]) / (len(times) - 2), 2)
    return out


def gen_for_training(model_key: str, tmp: Path, quick: bool, training: dict[str, Any], name: str):
    """A config whose rationales exist (generated once, reused by later stages with the same fingerprint)."""
    from tinyllm_ray.generate import generate

    config = job_config(tmp / f"gen_{model_key}", model_key, gen_data(tmp, quick, model_key)[0],
                        [teacher_spec(model_key, "greedy", 8 if quick else 16)], training=training)
    ensure_ray()
    generate(config)  # reuses the gen section's rationales when present
    return config


def run_plain_loop_process(config, steps: int, threads: int, allocator: str) -> dict[str, Any]:
    """:func:`run_plain_loop` in a fresh process (as a Train worker is one) on ``allocator``: ``system`` (glibc, what a
    plain script gets) or ``jemalloc`` (preloaded exactly as the product preloads it into CPU Train workers)."""
    from tinyllm_ray.runtime import allocator_env

    spec = Path(tempfile.mkdtemp(prefix="plain-loop-")) / "job.json"
    spec.write_text(config.model_dump_json())
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env.update(allocator_env(allocator, on_gpu=False))
    command = [sys.executable, "-m", "benchmarks.run", "--plain-loop", str(spec), str(steps), str(threads)]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    shutil.rmtree(spec.parent, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"plain loop process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plain_loop_child(spec: str, steps: str, threads: str) -> int:
    """``--plain-loop``: run the plain loop on a saved job config and print its result (and allocator) as JSON."""
    from tinyllm_ray.config import JobConfig
    from tinyllm_ray.runtime import allocator_in_use

    config = JobConfig.model_validate_json(Path(spec).read_text())
    result = run_plain_loop(config, int(steps), int(threads))
    result["jemalloc_loaded"] = allocator_in_use() == "jemalloc"
    print(json.dumps(result))
    return 0


# Each round runs these back to back; every ratio is taken within its round (see bench_train).
TRAIN_ROUND = (("plain", "system"), ("zero0", "jemalloc"), ("plain", "jemalloc"), ("zero0", "system"))


def overhead(plain: dict[str, Any], staged: dict[str, Any]) -> float | None:
    """How much slower ``staged`` trained than ``plain`` at steady state (0.1 = 10 % slower), by tokens/s."""
    a, b = plain.get("steady_tokens_per_s"), staged.get("steady_tokens_per_s")
    return round(a / b - 1, 3) if a and b else None


def bench_train(model_key: str, tmp: Path, quick: bool) -> dict[str, Any]:
    # enough steps that start-up transients (Ray Data ingest, the previous variant's workers exiting) average out
    steps = 4 if quick else (30 if model_key == "tiny" else 14)
    mb = 2 if (quick or model_key == "smollm2") else 4
    config = gen_for_training(model_key, tmp, quick, {"num_workers": 1, "micro_batch_size": mb, "max_steps": steps},
                              "train")
    out: dict[str, Any] = {"model": config.student.model, "micro_batch_size": mb, "steps": steps,
                           "padding": padding_waste(config), "rounds": []}

    def with_stage(stage: int, allocator: str):
        return type(config).model_validate({**config.model_dump(), "training": {**config.training.model_dump(),
                                                                               "zero_stage": stage,
                                                                               "allocator": allocator}})

    def plain(threads: int, allocator: str) -> dict[str, Any]:
        waited = wait_quiet()
        print(f"[bench] train {model_key}: plain PyTorch loop, {threads} thread(s), {allocator} allocator",
              flush=True)
        return {**run_plain_loop_process(config, steps, threads, allocator), "allocator": allocator,
                "waited_for_quiet_s": waited}

    def staged(stage: int, allocator: str, label: str) -> dict[str, Any]:
        waited = wait_quiet()
        print(f"[bench] train {model_key}: Ray Train + DeepSpeed ZeRO-{stage}, 1 worker, {allocator} allocator",
              flush=True)
        return {**run_train_stage(with_stage(stage, allocator), tmp / "train_logs", label),
                "allocator": allocator, "waited_for_quiet_s": waited}

    # This VM's speed drifts by tens of percent within minutes (the matmul peak measured 90-169 GFLOP/s in one
    # day), so the comparison runs in rounds: a plain loop and ZeRO-0 (what training.zero_stage "auto" runs with
    # one worker) on each allocator, back to back, with every ratio taken within its round. Ray Train runs the loop
    # in a thread, where glibc's allocator costs more than in a main thread, so each allocator is also compared with
    # itself: that is the framework's own overhead. As shipped (jemalloc) against a plain script (glibc) is what a
    # user sees.
    for index in range(1 if quick else 2):
        round_ = {}
        for kind, allocator in TRAIN_ROUND:
            round_[f"{kind}_{allocator}"] = (plain(1, allocator) if kind == "plain" else
                                             staged(0, allocator, f"{model_key}-r{index}-z0-{allocator}"))
        round_["overhead_same_allocator"] = {a: overhead(round_[f"plain_{a}"], round_[f"zero0_{a}"])
                                             for a in ("jemalloc", "system")}
        round_["overhead_as_shipped_vs_plain_script"] = overhead(round_["plain_system"], round_["zero0_jemalloc"])
        out["rounds"].append(round_)
    worker_threads = {r["zero0_jemalloc"]["ranks"][0]["torch_threads"] for r in out["rounds"]
                      if r["zero0_jemalloc"].get("ranks")}
    if worker_threads != {1}:
        out["note"] = f"the Train worker ran {worker_threads} torch threads; the plain loops ran 1"
    for key in ("jemalloc", "system"):
        values = [r["overhead_same_allocator"][key] for r in out["rounds"]]
        out[f"zero0_overhead_same_allocator_{key}"] = statistics.median(values) if None not in values else None
    values = [r["overhead_as_shipped_vs_plain_script"] for r in out["rounds"]]
    out["zero0_overhead_as_shipped_vs_plain_script"] = statistics.median(values) if None not in values else None
    # ZeRO-2 with one worker: what the explicit setting costs, against the plain loop run right after it
    out["ray_deepspeed_zero2"] = staged(2, "jemalloc", f"{model_key}-z2")
    out["plain_after_zero2"] = plain(1, "jemalloc")
    out["zero2_overhead_same_allocator"] = overhead(out["plain_after_zero2"], out["ray_deepspeed_zero2"])
    if (os.cpu_count() or 1) != 1:
        out[f"plain_{os.cpu_count()}t"] = plain(os.cpu_count() or 1, "system")
    return out


# ---------------------------------------------------------------- scaling

def bench_scale(tmp: Path, quick: bool, peak: float | None) -> dict[str, Any]:
    from tinyllm_ray.models import resolve_model

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
        rows = sum(t["rows"] for t in pipe["teachers"].values())
        prompt = sum(t["prompt_tokens"] for t in pipe["teachers"].values())
        gen = sum(t["generated_tokens"] for t in pipe["teachers"].values())
        cached = sum(t["cached_prompt_tokens"] for t in pipe["teachers"].values())
        out["teachers"].append({"teachers": count, "problems_per_teacher": rows // count,
                                **rates(pipe["stage_seconds"], rows, prompt, gen, params, peak, cached),
                                "memory": pipe["memory"]})
    out["demo_pool"] = [demo_pool_cost(base * repeat) for repeat in ((1, 10) if quick else (100, 1000, 10000))]
    steps = 3 if quick else 20
    for workers in (1, 2):  # training.zero_stage auto: ZeRO-0 with one worker, ZeRO-2 with two
        config = gen_for_training("tiny", tmp, quick, {"num_workers": workers, "micro_batch_size": 2 if quick else 4,
                                                       "max_steps": steps}, "scale")
        waited = wait_quiet()
        print(f"[bench] scale: training with {workers} worker(s)", flush=True)
        result = run_train_stage(config, tmp / "train_logs", f"scale-w{workers}")
        out["train_workers"].append({"workers": workers, "zero_stage": config.training.resolved_zero_stage,
                                     "waited_for_quiet_s": waited, **{k: result.get(k) for k in (
            "stage_seconds", "steady_tokens_per_s", "steady_step_s", "startup_to_first_step_s", "memory")},
            "ranks": result["ranks"]})
    return out


def demo_pool_cost(size: int, shards: int = 50) -> dict[str, Any]:
    """A teacher actor's cost of picking each problem's demonstrations from a train split of ``size`` problems
    (chunked in row groups of 1,024, as the frozen Parquet file reads back): it should not grow with ``size``."""
    import pyarrow as pa

    from tinyllm_ray.generate import demos_from_pool
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


# ---------------------------------------------------------------- driver memory

# VmHWM (the process's peak RSS) rather than ru_maxrss, which a child inherits from the parent it was forked from
_PEAK = """
import json, sys, time
sys.path.insert(0, {repo!r})
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))
{imports}
before = status("VmRSS")
t = time.time()
{work}
print(json.dumps({{"seconds": round(time.time() - t, 2), "peak_rss_mb": round(status("VmHWM") / 1024),
                  "rss_before_mb": round(before / 1024), "rows": rows}}))
"""


def _peak_rss(imports: str, work: str) -> dict[str, Any]:
    """Run ``work`` in a fresh interpreter (after ``imports``); its seconds and peak RSS (Linux)."""
    code = _PEAK.format(repo=str(REPO), imports=imports, work=work)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_driver(tmp: Path, quick: bool) -> dict[str, Any]:
    """The driver's peak memory where it still holds a whole split: validating the input problems (`prepare_problems`)
    and building the training table from two teachers' rationales (`train`), at 200,000 problems."""
    import pyarrow as pa

    from tinyllm_ray.layout import RunLayout
    from tinyllm_ray.schemas import RATIONALE_SCHEMA, write_manifest, write_table

    size = 20_000 if quick else 200_000
    rows = demo_train_rows()
    source = tmp / "driver_train.jsonl"
    with open(source, "w") as out:
        for i in range(size):
            out.write(json.dumps({**rows[i % len(rows)], "id": f"d{i}"}) + "\n")
    layout = RunLayout.of(tmp / "driver_run")
    print(f"[bench] driver: validating {size} problems", flush=True)
    load = _peak_rss(
        "from tinyllm_ray.config import DataConfig\nfrom tinyllm_ray.data import load_problems\n"
        "from tinyllm_ray.schemas import write_table",
        f"table = load_problems(DataConfig(format='jsonl', path={str(source)!r}), 'train')\n"
        f"write_table(table, {str(layout.problem_file('train'))!r}, row_group_size=1024)\nrows = table.num_rows")
    write_manifest(layout.problems, fingerprint="bench")
    # two teachers' rationales as shards of 1,024 rows, with prompts of a realistic length (2 demos, ~1,500 chars)
    prompt, rationale = "Question: ... " * 110, "Because the answer follows from the question. " * 6
    for teacher in ("t1", "t2"):
        folder = layout.teacher_dir(teacher)
        for start in range(0, size, 1024):
            ids = [f"d{i}" for i in range(start, min(start + 1024, size))]
            write_table(pa.Table.from_pylist([
                {"id": i, "dataset": "demo", "teacher": teacher, "model": "m", "prompt": prompt, "rationale": rationale,
                 "num_prompt_tokens": 300, "num_generated_tokens": 60, "finish_reason": "stop",
                 "sampling_params": "{}", "error": None} for i in ids], schema=RATIONALE_SCHEMA),
                folder / f"shard-{start // 1024:06d}.parquet")
        write_manifest(folder, rows=size)
    print(f"[bench] driver: training table of {size} problems x 2 teachers", flush=True)
    build = _peak_rss(
        "from tinyllm_ray.layout import RunLayout\nfrom tinyllm_ray.problems import load_frozen_problems\n"
        "from tinyllm_ray.train import load_rationales\nfrom tinyllm_ray.training_data import build_training_table",
        f"layout = RunLayout.of({str(layout.root)!r})\n"
        "table, _ = build_training_table(load_frozen_problems(layout, 'train'), "
        "{t: load_rationales(layout, t) for t in ('t1', 't2')})\nrows = table.num_rows")
    return {"problems": size, "input_mb": round(source.stat().st_size / 2**20, 1), "load_problems": load,
            "build_training_table": build}


# ---------------------------------------------------------------- start-up

def bench_startup(tmp: Path, timeout: float = 900) -> dict[str, Any]:
    """`tinyllm-ray run tiny` as a subprocess: seconds to the first rationale shard and to the first train step."""
    from tinyllm_ray.models import resolve_model

    resolve_model("builtin:tiny-llama")  # built once beforehand: measure start-up, not the first-ever model build
    out_dir = tmp / "startup_run"
    exe = Path(sys.executable).with_name("tinyllm-ray")
    cmd = [str(exe), "run", "tiny", "-o", str(out_dir)]
    lines: list[tuple[float, str]] = []
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp,
                            env=dict(os.environ))

    def reader():
        for line in proc.stdout:
            lines.append((time.time(), line.rstrip("\n")))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    first_shard = None
    while proc.poll() is None and time.time() - t0 < timeout:
        if first_shard is None and any((out_dir / "rationales").glob("*/shard-*.parquet")):
            first_shard = time.time() - t0
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    total = time.time() - t0
    thread.join(timeout=5)
    first_step = next((t - t0 for t, line in lines if "[train] step" in line), None)
    generate_done = next((t - t0 for t, line in lines if "rows," in line and "tokens in" in line), None)
    result = {"command": " ".join(["tinyllm-ray", "run", "tiny", "-o", "<tmp>"]), "returncode": proc.returncode,
              "to_first_shard_s": round(first_shard, 2) if first_shard else None,
              "to_first_teacher_done_s": round(generate_done, 2) if generate_done else None,
              "to_first_train_step_s": round(first_step, 2) if first_step else None, "total_s": round(total, 2)}
    if proc.returncode != 0:
        result["output_tail"] = "\n".join(line for _, line in lines[-40:])
    return result


# ---------------------------------------------------------------- report

def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    rows = [("benchmark", "variant", "seconds", "gen tok/s", "problems/s", "% fp32 peak", "notes")]

    def gen_row(bench, variant, r, notes=""):
        frac = r.get("fraction_of_peak")
        if r.get("cached_prompt_tokens"):  # not computed, so not in the FLOP/s
            notes = "; ".join(filter(None, [notes, f"{r['cached_prompt_tokens']}/{r['prompt_tokens']} prompt tokens "
                                                   "from the prefix cache"]))
        rows.append((bench, variant, fmt(r.get("seconds"), 2), fmt(r.get("gen_tokens_per_s")),
                     fmt(r.get("problems_per_s"), 3), fmt(frac * 100 if frac is not None else None, 2), notes))

    for key, g in results.get("gen", {}).items():
        if "error" in g:
            rows.append((f"gen {key}", "ERROR", "", "", "", "", g["error"].splitlines()[-1][:80]))
            continue
        p = g["pipeline"]
        gen_row(f"gen {key}", "pipeline stage", p["stage"], f"{g['problems']} problems, start-up est. "
                f"{fmt(p.get('startup_estimate_s'), 1)} s, peak worker RSS {p['memory']['ray_worker_max_rss_mb']} MB")
        if "steady" in p:
            gen_row(f"gen {key}", "pipeline steady", p["steady"],
                    f"shards {p['steady'].get('first_shard', 2)}..{p['shards']}, "
                    f"{g.get('shards_in_flight', 1)} shards of {g['shard_batch']} in flight")
        after = g.get("pipeline_after", {})
        if "steady" in after:
            gen_row(f"gen {key}", "pipeline steady, run again last", after["steady"], "after bare and transformers")
        free = g.get("pipeline_core_free", {})
        if "steady" in free:
            gen_row(f"gen {key}", f"pipeline steady, {free['engine_threads']} engine thread(s)", free["steady"],
                    f"num_cpus_per_actor {free['engine_threads']}: one core left to the rest; "
                    + (f"{free['steady']['gen_tokens_per_s'] / max(after['steady']['gen_tokens_per_s'], 1e-9):.2f}x "
                       "the run before" if "steady" in after else ""))
        b = g["bare_vllm"]
        gen_row(f"gen {key}", "bare vLLM (shard batches)", b["shard_batches"],
                f"init {b['engine_init_seconds']} s, {b['torch_threads']} torch thr, "
                f"same text {b['identical_to_pipeline']}")
        for label in ("shard_batches", "engine_batches"):
            if label == "engine_batches" and label in b:
                gen_row(f"gen {key}", f"bare vLLM (batches of {b[label]['batch_size']})", b[label], "")
            if f"{label}_steady" in b:
                gen_row(f"gen {key}", f"bare vLLM (batches of {b[label]['batch_size']}, 2..n)", b[f"{label}_steady"], "")
        gen_row(f"gen {key}", "bare vLLM (one call)", b["one_call"], "all prompts at once")
        h = g["transformers"]
        gen_row(f"gen {key}", "transformers generate", h, f"subset {h['subset']}, batch {h['batch_size']}, "
                f"same text {h['identical_to_pipeline']}")
        steady = p.get("steady", p["stage"])["gen_tokens_per_s"]
        if "steady" in after:  # the mean of the runs before and after the bare engine
            steady = (steady + after["steady"]["gen_tokens_per_s"]) / 2
        # the bare engine at the batch the pipeline keeps in flight (batch x shards_in_flight)
        reference = "engine_batches" if "engine_batches" in b else "shard_batches"
        bare_steady = b.get(f"{reference}_steady", b[reference])["gen_tokens_per_s"]
        rows.append((f"gen {key}", "ratios", "", "", "", "",
                     f"pipeline stage / transformers = {p['stage']['gen_tokens_per_s'] / max(h['gen_tokens_per_s'], 1e-9):.2f}x; "
                     f"pipeline steady (mean of runs) / transformers = {steady / max(h['gen_tokens_per_s'], 1e-9):.2f}x; "
                     f"pipeline steady / bare steady (batches of {b[reference]['batch_size']}) = {steady / max(bare_steady, 1e-9):.2f}; "
                     f"stage / bare(shard) = {p['stage']['gen_tokens_per_s'] / max(b['shard_batches']['gen_tokens_per_s'], 1e-9):.2f}"))
        fixed = g.get("fixed_demos")
        if fixed:
            fp, fh = fixed["pipeline"], fixed["transformers"]
            fixed_steady = fp.get("steady", fp["stage"])
            gen_row(f"gen {key}", "pipeline steady, fixed demos", fixed_steady,
                    "prompts.demo_sampler fixed: vLLM's prefix cache holds the shared demonstrations")
            gen_row(f"gen {key}", "transformers, fixed demos", fh, f"subset {fh['subset']}, "
                    f"same text {fh['identical_to_pipeline']}")
            rows.append((f"gen {key}", "ratios, fixed demos", "", "", "", "",
                         f"pipeline steady / transformers = "
                         f"{fixed_steady['gen_tokens_per_s'] / max(fh['gen_tokens_per_s'], 1e-9):.2f}x; "
                         f"fixed / per-problem demos, pipeline steady = "
                         f"{fixed_steady['gen_tokens_per_s'] / max(steady, 1e-9):.2f}x"))
    for key, t in results.get("train", {}).items():
        if "error" in t:
            rows.append((f"train {key}", "ERROR", "", "", "", "", t["error"].splitlines()[-1][:80]))
            continue
        def train_row(label: str, d: dict[str, Any], note: str) -> None:
            step = (f"step {d.get('steady_step_s')} s (median {d.get('median_step_s')}), "
                    f"{d.get('preemptions_per_step')} preemptions/step")
            rows.append((f"train {key}", label, fmt(d["stage_seconds"], 2) if "stage_seconds" in d else "",
                         fmt(d.get("steady_tokens_per_s")) + " train tok/s", "", "", f"{step}, {note}"))

        for index, round_ in enumerate(t.get("rounds", [])):
            for kind, allocator in TRAIN_ROUND:
                d = round_[f"{kind}_{allocator}"]
                if kind == "plain":
                    train_row(f"round {index + 1}: plain PyTorch, 1 thr, {allocator}", d,
                              f"start-up {d['startup_s']} s, first step {d['first_step_s']} s")
                else:
                    train_row(f"round {index + 1}: Ray Train+DS ZeRO-0, {allocator}", d,
                              f"first step after {d.get('startup_to_first_step_s')} s, "
                              f"{d['ranks'][0]['torch_threads'] if d['ranks'] else '?'} torch thr")
            rows.append((f"train {key}", f"round {index + 1}: overhead", "", "", "", "",
                         f"ZeRO-0 vs plain, same allocator: jemalloc "
                         f"{fmt(round_['overhead_same_allocator']['jemalloc'], 3)}, glibc "
                         f"{fmt(round_['overhead_same_allocator']['system'], 3)}; as shipped (jemalloc) vs plain "
                         f"script (glibc) {fmt(round_['overhead_as_shipped_vs_plain_script'], 3)}"))
        if "ray_deepspeed_zero2" in t:
            train_row("Ray Train+DS ZeRO-2, jemalloc", t["ray_deepspeed_zero2"], "then the plain loop:")
            train_row("plain PyTorch, 1 thr, jemalloc", t["plain_after_zero2"],
                      f"ZeRO-2 overhead {fmt(t.get('zero2_overhead_same_allocator'), 3)}")
        for name in sorted(k for k in t if k.startswith("plain_") and k[6:-1].isdigit()):
            train_row(f"plain PyTorch, {t[name]['torch_threads']} thr, glibc", t[name], "all cores")
        rows.append((f"train {key}", "padding / overhead (median of rounds)", "", "", "", "",
                     f"pad fraction {t['padding']['pad_fraction']} (one batch: "
                     f"{t['padding'].get('length_groups_1', {}).get('pad_fraction')}); ZeRO-0 vs plain, same "
                     f"allocator: jemalloc {fmt(t.get('zero0_overhead_same_allocator_jemalloc'), 3)}, glibc "
                     f"{fmt(t.get('zero0_overhead_same_allocator_system'), 3)}; as shipped vs plain script "
                     f"{fmt(t.get('zero0_overhead_as_shipped_vs_plain_script'), 3)}"))
    s = results.get("scale", {})
    if "error" in s:
        rows.append(("scale", "ERROR", "", "", "", "", s["error"].splitlines()[-1][:80]))
    for r in s.get("dataset", []):
        gen_row("scale data", f"{r['scale']}x ({r['problems']} problems)", r,
                f"driver {r['memory']['driver_rss_mb']} MB, ray workers {r['memory']['ray_workers_total_rss_mb']} MB "
                f"(max {r['memory']['ray_worker_max_rss_mb']})")
    for r in s.get("teachers", []):
        gen_row("scale teachers", f"{r['teachers']} x {r['problems_per_teacher']} problems", r,
                f"driver {r['memory']['driver_rss_mb']} MB, ray workers {r['memory']['ray_workers_total_rss_mb']} MB")
    for r in s.get("demo_pool", []):
        rows.append(("scale demo pool", f"train split of {r['pool']} problems", "", "", "", "",
                     f"{r['ms_per_shard_of_16']} ms per shard of 16 to pick the demos; pool {r['arrow_mb']} MB Arrow"))
    for r in s.get("train_workers", []):
        rows.append(("scale train", f"{r['workers']} worker(s), ZeRO-{r.get('zero_stage')}", fmt(r["stage_seconds"], 2),
                     fmt(r.get("steady_tokens_per_s")) + " train tok/s", "", "",
                     f"step {r.get('steady_step_s')} s, first step after {r.get('startup_to_first_step_s')} s, "
                     f"ray workers {r['memory']['ray_workers_total_rss_mb']} MB"))
    d = results.get("driver")
    if d:
        if "error" in d:
            rows.append(("driver", "ERROR", "", "", "", "", d["error"].splitlines()[-1][:80]))
        else:
            for step in ("load_problems", "build_training_table"):
                r = d[step]
                rows.append(("driver", f"{step}, {d['problems']} problems", fmt(r["seconds"], 2), "", "", "",
                             f"peak RSS {r['peak_rss_mb']} MB (after imports {r['rss_before_mb']} MB)"))
    st = results.get("startup")
    if st:
        if "error" in st:
            rows.append(("startup", "ERROR", "", "", "", "", st["error"].splitlines()[-1][:80]))
        else:
            rows.append(("startup", "tinyllm-ray run tiny", fmt(st["total_s"], 2), "", "", "",
                         f"first shard {st['to_first_shard_s']} s, first train step {st['to_first_train_step_s']} s, "
                         f"rc {st['returncode']}"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke version: tiny model only, small sizes")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {','.join(SECTIONS)}")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out"), help="folder for the JSON and table")
    parser.add_argument("--keep", action="store_true", help="keep the temporary run folders")
    parser.add_argument("--models", default=None,
                        help=f"comma list of {','.join(MODELS)} for the gen and train sections (default: both; "
                             "tiny with --quick)")
    parser.add_argument("--plain-loop", nargs=3, metavar=("JOB_JSON", "STEPS", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_loop:  # the child process of run_plain_loop_process
        return plain_loop_child(*args.plain_loop)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else (
        ["tiny"] if args.quick else list(MODELS))
    if not models or set(models) - set(MODELS):
        parser.error(f"--models: choose from {list(MODELS)}, got {args.models!r}")
    tmp = Path(tempfile.mkdtemp(prefix="tinyllm-bench-"))
    set_env(tmp)
    started = time.time()
    results: dict[str, Any] = {
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": args.quick, "sections": only,
        "machine": machine_info(), "loadavg_start": loadavg(), "versions": versions(),
        "env": {k: os.environ.get(k) for k in ("VLLM_TARGET_DEVICE", "VLLM_ENABLE_V1_MULTIPROCESSING",
                                                "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "HF_HUB_OFFLINE",
                                                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")},
    }
    results["matmul_peak"] = matmul_peak()
    peak = results["matmul_peak"]["best_gflops"]
    print(f"[bench] fp32 matmul peak {peak} GFLOP/s, loadavg {results['loadavg_start']}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "results-quick" if args.quick else "results"

    def section(name: str, fn, *a):
        (out / f"{stem}.partial.json").write_text(json.dumps(results, indent=2, default=str))
        t = time.time()
        la = loadavg()
        try:
            value = fn(*a)
        except Exception:  # noqa: BLE001 - record and go on with the other sections
            value = {"error": traceback.format_exc()}
            print(f"[bench] {name} FAILED:\n{value['error']}", flush=True)
        if isinstance(value, dict):
            value["section_seconds"] = round(time.time() - t, 1)
            value["loadavg_before"] = la
        return value

    if "startup" in only:  # first: before this process starts its own Ray cluster
        results["startup"] = section("startup", bench_startup, tmp)
    if "gen" in only:
        results["gen"] = {}
        for m in models:
            results["gen"][m] = section(f"gen {m}", bench_gen, m, tmp, args.quick, peak, 16)
    if "train" in only:
        results["train"] = {}
        for m in models:
            results["train"][m] = section(f"train {m}", bench_train, m, tmp, args.quick)
    if "scale" in only:
        results["scale"] = section("scale", bench_scale, tmp, args.quick, peak)
    if "driver" in only:
        results["driver"] = section("driver", bench_driver, tmp, args.quick)
    (out / f"{stem}.partial.json").write_text(json.dumps(results, indent=2, default=str))
    results["loadavg_end"] = loadavg()
    results["total_seconds"] = round(time.time() - started, 1)
    rendered = table(results)
    print("\n" + rendered)
    print(f"\nloadavg start {results['loadavg_start']} end {results['loadavg_end']}; "
          f"total {results['total_seconds']} s")
    (out / f"{stem}.partial.json").unlink(missing_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str))
    (out / f"{stem}.md").write_text(rendered + "\n")
    print(f"[bench] wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    try:
        import ray

        ray.shutdown()
    except Exception:  # noqa: BLE001
        pass
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
