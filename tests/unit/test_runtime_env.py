"""The environment a CPU teacher actor gets (in-process vLLM, a bounded oneDNN kernel cache) and the training
workers' allocator."""

import logging
from pathlib import Path

from tinyllm_ray import runtime
from tinyllm_ray.runtime import JEMALLOC_CONF, ONEDNN_CACHE_CAPACITY, allocator_env, teacher_env


def test_cpu_teacher_bounds_onednn_cache(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    env = teacher_env(on_gpu=False)
    assert env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == ONEDNN_CACHE_CAPACITY
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert all(isinstance(v, str) for v in env.values()), "runtime env vars must be strings"


def test_driver_setting_of_onednn_cache_wins(monkeypatch):
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    assert teacher_env(on_gpu=False)["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"


def test_gpu_teacher_gets_no_cpu_settings():
    assert teacher_env(on_gpu=True) == {}
    assert "LD_PRELOAD" in teacher_env(on_gpu=True, allocator="jemalloc")


def test_cpu_teacher_preloads_jemalloc_unless_told_not_to():
    assert teacher_env(on_gpu=False)["LD_PRELOAD"].endswith("libjemalloc.so")
    assert "LD_PRELOAD" not in teacher_env(on_gpu=False, allocator="system")


def test_cpu_workers_preload_the_jemalloc_inside_rays_wheel(monkeypatch):
    import ray

    monkeypatch.delenv("MALLOC_CONF", raising=False)
    env = allocator_env("auto", on_gpu=False)
    assert Path(env["LD_PRELOAD"]).is_file()
    assert Path(env["LD_PRELOAD"]).parent.parent == Path(ray.__file__).parent  # ray/core/libjemalloc.so
    assert env["MALLOC_CONF"] == JEMALLOC_CONF
    assert allocator_env("jemalloc", on_gpu=True)["LD_PRELOAD"] == env["LD_PRELOAD"]  # asked for explicitly


def test_system_allocator_and_gpu_workers_get_no_preload():
    assert allocator_env("system", on_gpu=False) == {}
    assert allocator_env("auto", on_gpu=True) == {}


def test_training_workers_keep_the_system_allocator_unless_asked():
    # jemalloc's kept pages grew a SmolLM2 worker past the machine's memory over a real run (benchmarks/RESULTS.md)
    assert allocator_env("auto", on_gpu=False, auto_on_cpu="system") == {}
    assert "LD_PRELOAD" in allocator_env("jemalloc", on_gpu=False, auto_on_cpu="system")


def test_driver_malloc_conf_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_CONF", "background_thread:true")
    assert allocator_env("auto", on_gpu=False)["MALLOC_CONF"] == "background_thread:true"


def test_missing_jemalloc_warns_and_keeps_the_system_allocator(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "jemalloc_path", lambda: None)
    with caplog.at_level(logging.WARNING, logger="tinyllm_ray"):
        assert allocator_env("jemalloc", on_gpu=False) == {}
    assert "no ray/core/libjemalloc.so" in caplog.text


def test_local_cluster_silences_only_the_placement_group_cleaners_dashboard_warning():
    from ray.train.v2._internal.execution.controller import placement_group_cleaner

    env = runtime.local_cluster_runtime_env(EXTRA="1")
    assert env["env_vars"]["EXTRA"] == "1" and env["env_vars"].items() >= runtime.WORKER_ENV.items()
    module, _, name = env["worker_process_setup_hook"].rpartition(".")
    hook = getattr(__import__(module, fromlist=[name]), name)
    cleaner_log = placement_group_cleaner.logger  # the logger Ray's cleaner warns on: a Ray upgrade may move it
    cleaner_log.setLevel(logging.NOTSET)
    try:
        hook()
        assert not cleaner_log.isEnabledFor(logging.WARNING) and cleaner_log.isEnabledFor(logging.ERROR)
        assert logging.getLogger("ray.train").getEffectiveLevel() <= logging.WARNING
    finally:
        cleaner_log.setLevel(logging.NOTSET)
