"""What every benchmark section shares: the environment, the machine's description, a memory sampler, and the
typed result a section returns. Nothing here runs a stage."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO_TRAIN = REPO / "tinyllm_ray" / "demo_data" / "demo_train.jsonl"
DEMO_VALID = REPO / "tinyllm_ray" / "demo_data" / "demo_valid.jsonl"
# the environment variables a results file records
RECORDED_ENV = ("VLLM_TARGET_DEVICE", "VLLM_ENABLE_V1_MULTIPROCESSING", "ONEDNN_PRIMITIVE_CACHE_CAPACITY",
                "HF_HUB_OFFLINE", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")

# a teacher actor's process title names its class (tinyllm_ray.teachers.actor)
TEACHER_ACTOR_CLASSES = ("TeacherActor",)

Row = tuple[str, str, str, str, str, str, str]
HEADER: Row = ("benchmark", "variant", "seconds", "gen tok/s", "problems/s", "% fp32 peak", "notes")


@dataclass(frozen=True)
class Context:
    """What every section is given: a scratch folder, the run's size, the matmul peak, the models asked for."""

    tmp: Path
    quick: bool = False
    peak_gflops: float | None = None
    models: tuple[str, ...] = ("tiny",)
    hf_subset: int = 16


@dataclass(frozen=True)
class SectionResult:
    """One section's (or one section-and-model's) raw numbers, JSON-able, and its rows of the results table.

    Each section module subclasses it and overrides :meth:`table_rows`; ``key`` is the model for per-model sections.
    """

    section: str
    data: dict[str, Any]
    key: str | None = None
    seconds: float | None = None
    loadavg_before: list[float] | None = field(default=None)

    @property
    def label(self) -> str:
        return f"{self.section} {self.key}" if self.key else self.section

    def to_json(self) -> dict[str, Any]:
        out = dict(self.data)
        if self.seconds is not None:
            out["section_seconds"] = self.seconds
        if self.loadavg_before is not None:
            out["loadavg_before"] = self.loadavg_before
        return out

    def rows(self) -> list[Row]:
        return self.table_rows()

    def table_rows(self) -> list[Row]:
        return []


@dataclass(frozen=True)
class Failed(SectionResult):
    """A section that raised: its traceback is its data, one ERROR row its table."""

    def table_rows(self) -> list[Row]:
        return [(self.label, "ERROR", "", "", "", "", self.data["error"].splitlines()[-1][:80])]


def set_env(tmp: Path) -> None:
    """The environment the product gives CPU teachers and Ray workers (from :mod:`tinyllm_ray.runtime`, so the bare
    engine and the plain loops run as the actors do), no model hub, and private vLLM / inductor caches."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tinyllm_ray import runtime

    # the CPU teacher's settings without its allocator: this process and its plain-loop children choose their own
    for key, value in {**runtime.teacher_env(False, allocator="system"), **runtime.WORKER_ENV}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp / "vllm_cache"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp / "inductor_cache"))


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
                if any(name in title for name in TEACHER_ACTOR_CLASSES) and not self.teacher_actor_env:
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


def preempted() -> int:
    """Involuntary context switches of the calling thread so far (``/proc/thread-self/status``)."""
    with open("/proc/thread-self/status") as status:
        return int(status.read().split("nonvoluntary_ctxt_switches:")[1].split()[0])


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def gen_row(bench: str, variant: str, r: dict[str, Any], notes: str = "") -> Row:
    """A generation row from a :func:`rates` dict; prefix-cache hits are noted (they are not in the FLOP/s)."""
    frac = r.get("fraction_of_peak")
    if r.get("cached_prompt_tokens"):
        notes = "; ".join(filter(None, [notes, f"{r['cached_prompt_tokens']}/{r['prompt_tokens']} prompt tokens "
                                               "from the prefix cache"]))
    return (bench, variant, fmt(r.get("seconds"), 2), fmt(r.get("gen_tokens_per_s")),
            fmt(r.get("problems_per_s"), 3), fmt(frac * 100 if frac is not None else None, 2), notes)


def markdown(rows: list[Row]) -> str:
    """The results table: a header row and ``rows``, columns padded to their widest cell."""
    rows = [HEADER, *rows]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(HEADER))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def run_job_process(module: str, config, steps: int, threads: int, extra_env: dict[str, str], what: str) -> dict:
    """``python -m module <job.json> steps threads`` in a fresh process, on the system allocator unless ``extra_env``
    preloads another; the child prints its JSON result as its last line."""
    spec = Path(tempfile.mkdtemp(prefix=f"{module.rsplit('.', 1)[-1]}-")) / "job.json"
    spec.write_text(config.model_dump_json())
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env.update(extra_env)
    command = [sys.executable, "-m", module, str(spec), str(steps), str(threads)]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    shutil.rmtree(spec.parent, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
