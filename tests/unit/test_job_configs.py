"""The shipped cluster job configs (jobs/*.yaml) and cluster definitions (cluster/**) stay loadable and on-spec.

Pure parsing: no data is read, no Ray is started, no model is resolved.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tinyllm_ray.config import JobConfig, load_config

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"
CLUSTER = REPO / "cluster"
PAPER_JOBS = ("obqa", "arc", "piqa", "riddlesense", "pubmedqa", "bioasq")
TINYLLM_FORMAT = {"obqa", "arc", "pubmedqa"}
JOB_FILES = sorted(p for p in JOBS.glob("*.yaml") if p.name != "runtime_env.yaml")


def test_every_expected_job_file_exists():
    assert {p.stem for p in JOB_FILES} == set(PAPER_JOBS) | {"demo"}


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.stem)
def test_job_config_loads(path):
    config = load_config(str(path))
    assert isinstance(config, JobConfig)
    assert config.name == path.stem
    assert config.output_dir.startswith("/mnt/shared/"), "cluster jobs write to storage every node mounts"
    assert config.data.eval_split == "valid"
    for teacher in config.teachers:
        assert teacher.engine.kv_cache_memory_bytes is None, "vLLM on GPU sizes its own KV cache"
        assert teacher.resources.num_gpus_per_actor == teacher.engine.tensor_parallel_size
    assert config.training.use_gpu


@pytest.mark.parametrize("name", PAPER_JOBS)
def test_paper_job_settings(name):
    config = load_config(str(JOBS / f"{name}.yaml"))
    assert config.data.dataset == name
    if name in TINYLLM_FORMAT:
        assert (config.data.format, config.data.path) == ("tinyllm", f"data/tinyllm/{name}")
    else:
        assert config.data.format == "jsonl" and "{split}" in config.data.path
    assert config.prompts.num_demos == 2
    assert config.prompts.task_prefix == "predict: "
    assert len(config.teachers) == 2
    assert {t.rationale_prefix for t in config.teachers} == {"explain: ", "rationale: "}
    assert any(t.model == "meta-llama/Llama-2-7b-chat-hf" for t in config.teachers)
    for teacher in config.teachers:
        assert teacher.resources.num_gpus_per_actor == teacher.engine.tensor_parallel_size >= 1
        assert teacher.engine.dtype == "bfloat16"
        assert "t5" not in teacher.model.lower(), "vLLM 0.32 serves no encoder-decoder T5 teachers"
    assert config.student.model.startswith("google/flan-t5-")
    assert config.student.architecture == "seq2seq"
    assert config.student.max_input_tokens == 1024
    training = config.training
    assert training.use_gpu and training.dtype == "bf16"
    assert training.micro_batch_size * training.gradient_accumulation_steps * training.num_workers == 16
    assert training.learning_rate == pytest.approx(5e-5)
    assert training.epochs == 1 and training.max_steps is None
    assert set(training.alpha) == {t.name for t in config.teachers}


@pytest.mark.parametrize("name", PAPER_JOBS)
def test_paper_job_documents_alpha_search_space_and_t5_caveat(name):
    text = (JOBS / f"{name}.yaml").read_text()
    assert "{0.01, 0.1, 0.5, 1, 2, 3}" in text
    assert "vLLM 0.32 does not serve encoder-decoder T5" in text


def test_overrides_apply_to_cluster_jobs():
    config = load_config(str(JOBS / "obqa.yaml"), [
        "data.path=/mnt/shared/data/tinyllm/obqa", "student.model=google/flan-t5-base",
        "training.alpha.llama2_chat_7b=2", "training.num_workers=2", "training.gradient_accumulation_steps=2"])
    assert config.data.path == "/mnt/shared/data/tinyllm/obqa"
    assert config.alpha_for("llama2_chat_7b") == 2.0
    assert config.training.micro_batch_size * config.training.gradient_accumulation_steps * 2 == 16


def test_runtime_env_file():
    env = yaml.safe_load((JOBS / "runtime_env.yaml").read_text())
    assert any("[gpu]" in p for p in env["pip"]["packages"])
    env_vars = env["env_vars"]
    assert all(isinstance(v, str) for v in env_vars.values()), "runtime env vars must be strings"
    # The driver passes no runtime env when joining a cluster, so no merge override is needed.
    assert "RAY_OVERRIDE_JOB_RUNTIME_ENV" not in env_vars
    assert "HF_TOKEN" not in env_vars, "never commit a token"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _by_kind(path: Path, kind: str) -> dict:
    found = [d for d in _docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{path}: expected one {kind}"
    return found[0]


def _check_cluster_spec(spec: dict):
    head = spec["headGroupSpec"]
    assert str(head["rayStartParams"]["num-cpus"]) == "0"
    head_container = head["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head_container.get("resources", {}).get("limits", {})
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpus = {name: int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
            for name, g in groups.items()}
    assert gpus == {"teachers": 1, "trainers": 4}
    for group in [head, *groups.values()]:
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"].startswith("rayproject/ray:2.60.0")
        assert any(m["mountPath"] == "/mnt/shared" for m in container["volumeMounts"])
        assert any(v.get("persistentVolumeClaim") for v in pod["volumes"])
        for value in group["rayStartParams"].values():
            assert isinstance(value, str), "rayStartParams values must be strings"


def test_kuberay_raycluster():
    path = CLUSTER / "kuberay" / "raycluster.yaml"
    cluster = _by_kind(path, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    _check_cluster_spec(cluster["spec"])
    pvc = _by_kind(path, "PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_kuberay_rayjob():
    path = CLUSTER / "kuberay" / "rayjob.yaml"
    job = _by_kind(path, "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("tinyllm-ray run jobs/obqa.yaml")
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    assert "rayClusterSpec" in spec or "clusterSelector" in spec
    if "rayClusterSpec" in spec:
        _check_cluster_spec(spec["rayClusterSpec"])
        assert spec["rayClusterSpec"] == _by_kind(CLUSTER / "kuberay" / "raycluster.yaml", "RayCluster")["spec"]


def test_ray_up_aws_config():
    config = yaml.safe_load((CLUSTER / "aws" / "cluster.yaml").read_text())
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type", "setup_commands"):
        assert key in config
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    instances = {name: t["node_config"]["InstanceType"] for name, t in types.items()}
    assert set(instances.values()) == {"m5.2xlarge", "g5.xlarge", "g5.12xlarge"}
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert all(0 <= t["min_workers"] <= t["max_workers"] for t in workers)
    assert sum(t["max_workers"] for t in workers) <= config["max_workers"]
    assert any("[gpu]" in cmd for cmd in config["setup_commands"])


def test_ray_up_aws_config_matches_ray_schema():
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = yaml.safe_load((CLUSTER / "aws" / "cluster.yaml").read_text())
    util.validate_config(util.prepare_config(config))  # raises on unknown or mistyped fields
