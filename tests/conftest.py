"""Shared test setup: offline, CPU-only, caches in temp dirs; one local Ray cluster per session for integration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "tinyllm"


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    """Tiny models are rebuilt per session (cheap, deterministic); vLLM / inductor caches never leak between runs."""
    root = tmp_path_factory.mktemp("caches")
    saved = {k: os.environ.get(k) for k in ("TINYLLM_RAY_CACHE", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR")}
    os.environ["TINYLLM_RAY_CACHE"] = str(root / "tinyllm")
    os.environ["VLLM_CACHE_ROOT"] = str(root / "vllm")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def ray_cluster(_isolated_caches):
    """A real local Ray cluster with spare logical CPUs (2 cores host teacher actors, tasks and 2 trainers)."""
    import ray

    from tinyllm_ray.runtime import local_cluster_runtime_env

    env = local_cluster_runtime_env(VLLM_CACHE_ROOT=os.environ["VLLM_CACHE_ROOT"],
                                    TORCHINDUCTOR_CACHE_DIR=os.environ["TORCHINDUCTOR_CACHE_DIR"])
    ray.init(num_cpus=6, include_dashboard=False, runtime_env=env)
    yield ray
    ray.shutdown()
