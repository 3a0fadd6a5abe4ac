"""The environment a CPU teacher actor gets: in-process vLLM and a bounded oneDNN kernel cache."""

from tinyllm_ray.runtime import ONEDNN_CACHE_CAPACITY, teacher_env


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
