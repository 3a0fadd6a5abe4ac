"""The shipped cluster job configs (jobs/*.yaml) and cluster definitions (cluster/**) stay loadable and on-spec,
and agree with each other: every custom Ray resource a job asks for is advertised by the right group of every
cluster definition.

Pure parsing: no data is read, no Ray is started, no model is resolved.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tinyllm_ray.config import JobConfig, load_config

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"
CLUSTER = REPO / "cluster"
PAPER_JOBS = ("obqa", "arc", "piqa", "riddlesense", "pubmedqa", "bioasq")
PAPER_RATIONALE_JOBS = ("arc_paper_rationales", "obqa_paper_rationales")  # the paper's rationales, imported
# The folder of each paper dataset in the TinyLLM repository (datasets/<folder>/), as `tinyllm-ray data fetch` names it.
REPOSITORY_FOLDER = {"obqa": "obqa", "arc": "arc", "pubmedqa": "pubmedqa", "piqa": "piqa", "riddlesense": "riddle",
                     "bioasq": "bioasq", "arc_paper_rationales": "arc", "obqa_paper_rationales": "obqa"}
LOCAL_JOBS = ("arc_fidelity",)  # experiments for the 2-core CPU machine, not cluster jobs
JOB_FILES = sorted(p for p in JOBS.glob("*.yaml") if p.name != "runtime_env.yaml" and p.stem not in LOCAL_JOBS)
PAPER_ALPHAS = [0.01, 0.1, 0.5, 1.0, 2.0, 3.0]
PAPER_STUDENTS = ["google/flan-t5-small", "google/flan-t5-base", "google/flan-t5-large"]
TEACHER_ROLE, TRAINER_ROLE, DRIVER_ROLE = "tinyllm_teacher", "tinyllm_trainer", "tinyllm_driver"


def test_every_expected_job_file_exists():
    assert {p.stem for p in JOB_FILES} == set(PAPER_JOBS) | set(PAPER_RATIONALE_JOBS) | {"demo"}
    assert all((JOBS / f"{name}.yaml").is_file() for name in LOCAL_JOBS)


def test_fidelity_job_compares_answer_only_each_teacher_and_both(monkeypatch):
    from tinyllm_ray.preflight import problems
    from tinyllm_ray.sweep import plan_trials

    config = load_config(str(JOBS / "arc_fidelity.yaml"))
    assert [t.kind for t in config.teachers] == ["imported", "imported"]
    assert config.data.eval_split == "test" and config.evaluation.method == "loglikelihood"
    assert config.student.model == "builtin:smollm2-135m"
    kinds = sorted(trial.kind for trial in plan_trials(config))
    assert kinds == ["answer_only", "single_teacher", "single_teacher", "tinyllm"]
    if (REPO.parent / "shared" / "data" / "tinyllm" / "arc").is_dir():  # its data path is relative to the repo
        monkeypatch.chdir(REPO)
        assert problems(config, "sweep") == []


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.stem)
def test_job_config_loads(path):
    config = load_config(str(path))
    assert isinstance(config, JobConfig)
    assert config.name == path.stem
    assert config.output_dir.startswith("/mnt/shared/"), "cluster jobs write to storage every node mounts"
    assert config.data.eval_split == "valid"
    for teacher in config.teachers:
        if teacher.kind == "imported":
            assert teacher.resources.num_gpus_per_actor == 0 and path.stem in PAPER_RATIONALE_JOBS
            continue
        assert teacher.engine.kv_cache_memory_bytes is None, "vLLM on GPU sizes its own KV cache"
        assert teacher.resources.num_gpus_per_actor == teacher.engine.tensor_parallel_size
        assert teacher.resources.custom_resources == {TEACHER_ROLE: teacher.resources.num_gpus_per_actor}, \
            "one tinyllm_teacher per GPU the actor holds"
    assert config.training.use_gpu
    assert config.training.custom_resources_per_worker == {TRAINER_ROLE: 1}, "one tinyllm_trainer per worker GPU"
    assert config.metrics.tensorboard, "event files under <output_dir>/metrics/"
    assert config.metrics.mlflow == "auto" and config.metrics.wandb == "auto", \
        "mlflow / wandb are not dependencies: never required by a shipped job"


@pytest.mark.parametrize("name", PAPER_JOBS)
def test_paper_job_settings(name):
    config = load_config(str(JOBS / f"{name}.yaml"))
    assert config.data.dataset == name
    assert (config.data.format, config.data.path) == ("tinyllm", f"data/tinyllm/{REPOSITORY_FOLDER[name]}"), \
        "read the repository's own layout, where `tinyllm-ray data fetch` puts it"
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
def test_paper_job_sweeps_the_paper_search_space(name):
    config = load_config(str(JOBS / f"{name}.yaml"))
    sweep = config.sweep
    assert sweep.alpha == pytest.approx(PAPER_ALPHAS)
    assert sweep.students == PAPER_STUDENTS
    assert sweep.baselines is True
    assert sweep.teacher_subsets == [] and sweep.data_fractions == [], "the job's own teachers and data"


@pytest.mark.parametrize("name", PAPER_JOBS)
def test_paper_job_documents_alpha_search_space_and_t5_caveat(name):
    text = (JOBS / f"{name}.yaml").read_text()
    assert "{0.01, 0.1, 0.5, 1, 2, 3}" in text
    assert "vLLM 0.32 does not serve encoder-decoder T5" in text
    assert f"tinyllm-ray sweep jobs/{name}.yaml" in text
    assert "no sweep feature" not in text.lower()


@pytest.mark.parametrize("name", PAPER_JOBS + PAPER_RATIONALE_JOBS)
def test_paper_job_header_states_how_to_fetch_and_what_the_dataset_holds(name):
    from tinyllm_ray.dataset_manifest import DATASETS

    text = (JOBS / f"{name}.yaml").read_text()
    header = text[:text.index("\nname: ")]
    spec = DATASETS[REPOSITORY_FOLDER[name]]
    fetch = f"tinyllm-ray data fetch {spec.name}" + (" --rationales" if name in PAPER_RATIONALE_JOBS else "")
    assert fetch in header
    assert f"{spec.options} options" in header
    if spec.rows:  # pinned counts are stated as the fetch checks them
        assert " / ".join(str(spec.rows[s]) for s in ("train", "valid", "test")) in header
    else:
        assert f"Split sizes: counted by `tinyllm-ray data fetch {spec.name}`" in header


def _write_tinyllm_folder(root: Path, folder: str, options: int, context_words: int) -> Path:
    """A small dataset folder in the TinyLLM repository's layout: problems and llm/ rationales for every split."""
    target = root / folder
    (target / "llm").mkdir(parents=True)
    choices = [f"option {chr(97 + i)}" for i in range(options)]
    context = " ".join(["context"] * context_words)
    for split, count in (("train", 5), ("valid", 3), ("test", 2)):
        records = [{"id": f"{folder}-{split}-{i}", "question": f"{context} Which option is right, case {i}?".strip(),
                    "choices": choices, "answer": choices[i % options]} for i in range(count)]
        (target / f"{folder}_{split}.json").write_text(json.dumps(records))
        texts = [f"It fits. Thus, the answer is ({chr(97 + i % options)}) {choices[i % options]} llama rationale: "
                 f"Because of case {i}." for i in range(count)]
        (target / "llm" / f"{split}_CoT_0.json").write_text(json.dumps(texts))
    return target


@pytest.mark.parametrize("name", PAPER_JOBS + PAPER_RATIONALE_JOBS)
def test_paper_job_validates_against_a_folder_in_the_repository_layout(name, tmp_path):
    """`tinyllm-ray validate` of the job as shipped, data.path (and imported sources) pointed at a fixture folder."""
    from typer.testing import CliRunner

    from tinyllm_ray.cli import app
    from tinyllm_ray.data import load_problems
    from tinyllm_ray.dataset_manifest import DATASETS
    from tinyllm_ray.rationale_import import read_imported

    spec = DATASETS[REPOSITORY_FOLDER[name]]
    folder = _write_tinyllm_folder(tmp_path, spec.name, spec.options, 400 if spec.name in {"bioasq", "pubmedqa"} else 0)
    overrides = [f"data.path={folder}"]
    config = load_config(str(JOBS / f"{name}.yaml"))
    overrides += [f"teachers.{t.name}.source.path={folder}" for t in config.teachers if t.kind == "imported"]
    args = ["validate", str(JOBS / f"{name}.yaml"), *[a for o in overrides for a in ("--set", o)]]
    # HF_HUB_OFFLINE=0 as the jobs' runtime env sets it: hub ids are then accepted unread (validate downloads nothing)
    result = CliRunner().invoke(app, args, env={"HF_HUB_OFFLINE": "0"})
    assert result.exit_code == 0, result.output
    assert "'train': 5, 'valid': 3" in result.output
    config = load_config(str(JOBS / f"{name}.yaml"), overrides)
    train = load_problems(config.data, "train")
    assert {len(c) for c in train.column("choices").to_pylist()} == {spec.options}
    for teacher in config.teachers:
        if teacher.kind == "imported":
            assert read_imported(teacher.source, train.column("id").to_pylist()).table.num_rows == 5


def test_jobs_readme_fetches_before_submitting():
    readme = (JOBS / "README.md").read_text()
    for name in PAPER_JOBS:
        assert f"tinyllm-ray data fetch {REPOSITORY_FOLDER[name]}" in readme
    for name in PAPER_RATIONALE_JOBS:
        assert f"tinyllm-ray data fetch {REPOSITORY_FOLDER[name]} --rationales" in readme


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.stem)
def test_jobs_readme_has_run_and_sweep_command_lines(path):
    readme = (JOBS / "README.md").read_text()
    submit = "ray job submit --address http://<head>:8265 --working-dir . --runtime-env jobs/runtime_env.yaml -- "
    for command in ("run", "sweep"):
        assert f"{submit}tinyllm-ray {command} jobs/{path.name}" in readme


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
    assert not any(p.split("[")[0].strip() in {"mlflow", "wandb"} for p in env["pip"]["packages"]), \
        "optional metrics sinks stay opt-in"


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
        assert container["image"].startswith("REGISTRY/tinyllm-ray:")  # cluster/Dockerfile's (test_runtime_env.py)
        assert any(m["mountPath"] == "/mnt/shared" for m in container["volumeMounts"])
        assert any(v.get("persistentVolumeClaim") for v in pod["volumes"])
        for value in group["rayStartParams"].values():
            assert isinstance(value, str), "rayStartParams values must be strings"
        if group.get("resources"):
            # The group-level field (KubeRay >= 1.5) is a map of quantity strings, and the operator rejects a group
            # that also sets resources in rayStartParams.
            assert all(isinstance(v, str) for v in group["resources"].values()), "group resources are strings"
            assert not {"resources", "num-cpus", "num-gpus", "memory"} & set(group["rayStartParams"]), \
                "KubeRay rejects resources in both the group field and rayStartParams"


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



# ---------------------------------------------------------------- node roles: jobs x cluster definitions

AWS_GPUS = {"g5.xlarge": 1, "g5.12xlarge": 4}  # GPUs per instance type used in cluster/aws/cluster.yaml


def _ray_start_custom_resources(params: dict) -> dict[str, float]:
    """The classic rayStartParams form '"{\\"name\\": 1}"', parsed as Ray's KubeRay autoscaler parses it."""
    if "resources" not in params:
        return {}
    return {k: float(v) for k, v in json.loads(params["resources"][1:-1].replace("\\", "")).items()}


def _kuberay_group(group: dict) -> dict:
    custom = {k: float(v) for k, v in (group.get("resources") or {}).items() if k not in {"CPU", "GPU", "memory"}}
    custom = custom or _ray_start_custom_resources(group.get("rayStartParams") or {})
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    return {"custom": custom, "gpus": int(limits.get("nvidia.com/gpu", 0)), "max_nodes": group.get("maxReplicas")}


def cluster_groups() -> dict[str, dict[str, dict]]:
    """Per cluster definition: the head, teacher and trainer groups with their custom resources, GPUs per node and
    maximum node count."""
    definitions = {}
    for name, kind in (("kuberay/raycluster.yaml", "RayCluster"), ("kuberay/rayjob.yaml", "RayJob")):
        spec = _by_kind(CLUSTER / name, kind)["spec"]
        spec = spec.get("rayClusterSpec", spec)
        groups = {g["groupName"]: _kuberay_group(g) for g in spec["workerGroupSpecs"]}
        head = spec["headGroupSpec"]
        groups["head"] = {"custom": {**{k: float(v) for k, v in (head.get("resources") or {}).items()
                                        if k not in {"CPU", "GPU", "memory"}},
                                     **_ray_start_custom_resources(head["rayStartParams"])}, "gpus": 0, "max_nodes": 1}
        definitions[name] = groups
    config = yaml.safe_load((CLUSTER / "aws" / "cluster.yaml").read_text())
    types = config["available_node_types"]
    role_of = {config["head_node_type"]: "head", "ray.worker.teacher": "teachers", "ray.worker.trainer": "trainers"}
    definitions["aws/cluster.yaml"] = {
        role_of[name]: {"custom": {k: float(v) for k, v in t.get("resources", {}).items()
                                   if k not in {"CPU", "GPU", "memory"}},
                        "gpus": AWS_GPUS.get(t["node_config"]["InstanceType"], 0),
                        "max_nodes": t.get("max_workers", 1)}
        for name, t in types.items()}
    return definitions


CLUSTER_DEFINITIONS = sorted(cluster_groups())


@pytest.mark.parametrize("definition", CLUSTER_DEFINITIONS)
def test_gpu_groups_advertise_their_role_one_per_gpu(definition):
    groups = cluster_groups()[definition]
    assert set(groups) == {"head", "teachers", "trainers"}
    assert groups["teachers"]["custom"] == {TEACHER_ROLE: groups["teachers"]["gpus"]}
    assert groups["trainers"]["custom"] == {TRAINER_ROLE: groups["trainers"]["gpus"]}
    assert groups["head"]["custom"] == {DRIVER_ROLE: groups["head"]["custom"].get(DRIVER_ROLE, 0)} and \
        groups["head"]["custom"][DRIVER_ROLE] >= 1, "the head advertises only the sweep trials' driver resource"
    assert DRIVER_ROLE not in groups["teachers"]["custom"] and DRIVER_ROLE not in groups["trainers"]["custom"]


@pytest.mark.parametrize("definition", CLUSTER_DEFINITIONS)
@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.stem)
def test_job_custom_resources_are_advertised_by_the_right_group(path, definition):
    config = load_config(str(path))
    groups = cluster_groups()[definition]
    teachers, trainers = groups["teachers"], groups["trainers"]
    for teacher in config.teachers:
        if teacher.kind == "imported":  # a CPU actor for seconds: it takes no GPU anywhere
            assert teacher.resources.num_gpus_per_actor == 0
            continue
        wanted = teacher.resources.custom_resources
        assert wanted, f"{teacher.name}: no custom resource, so teacher actors could take trainer GPUs"
        for name, amount in wanted.items():
            assert teachers["custom"].get(name, 0) >= amount, f"{teacher.name}: {name} x{amount} fits no teacher node"
            assert name not in trainers["custom"], f"{name} is also on trainer nodes"
        assert teacher.resources.num_gpus_per_actor <= teachers["gpus"]
    training = config.training
    wanted = training.custom_resources_per_worker
    assert wanted, "no custom resource, so training workers could land on teacher nodes"
    # STRICT_PACK puts every worker of a run on one node: the whole run must fit one trainer node.
    workers_per_node = training.num_workers if training.placement_strategy == "STRICT_PACK" else 1
    for name, amount in wanted.items():
        assert trainers["custom"].get(name, 0) >= amount * workers_per_node, f"{name}: the run fits no trainer node"
        assert name not in teachers["custom"], f"{name} is also on teacher nodes"
    assert workers_per_node <= trainers["gpus"]
    # a sweep trial's driver holds its resource for the whole trial: only the head may offer it
    assert config.sweep.trial_resources, "no trial resource, so sweep trial drivers could hold GPU nodes"
    for name, amount in config.sweep.trial_resources.items():
        concurrent = config.sweep.max_concurrent_trials or 1
        assert groups["head"]["custom"].get(name, 0) >= amount * concurrent, f"{name}: the trials fit no head"


@pytest.mark.parametrize("definition", CLUSTER_DEFINITIONS)
@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.stem)
def test_sweep_concurrency_fits_the_trainer_group(path, definition):
    config = load_config(str(path))
    trainers = cluster_groups()[definition]["trainers"]
    concurrent = config.sweep.max_concurrent_trials
    assert concurrent is not None, "say how many trials the trainer group runs at once"
    capacity = trainers["custom"][TRAINER_ROLE] * trainers["max_nodes"]
    needed = concurrent * config.training.num_workers * config.training.custom_resources_per_worker[TRAINER_ROLE]
    assert needed <= capacity, f"{concurrent} concurrent trials need {needed} {TRAINER_ROLE}, the group has {capacity}"


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.stem)
def test_documented_trial_counts_match_the_sweep_plan(path):
    """jobs/README.md and the job files state how many trials a sweep has; the planner decides. Every trial's config
    must also validate (a sweep checks that before it starts anything)."""
    sweep = pytest.importorskip("tinyllm_ray.sweep")
    config = load_config(str(path))
    trials = sweep.plan_trials(config)
    for trial in trials:
        sweep.trial_config(config, trial)
    readme = (JOBS / "README.md").read_text()
    if path.stem == "demo":
        documented = re.search(r"`jobs/demo\.yaml`: [^)]*= (\d+) trials", readme)
    else:
        documented = re.search(r"\*\*(\d+) trials per dataset\*\*", readme)
    assert documented and int(documented.group(1)) == len(trials), "jobs/README.md states another trial count"
    in_file = re.search(r"(\d+) trials", path.read_text())
    assert in_file and int(in_file.group(1)) == len(trials), f"{path.name} states another trial count"
