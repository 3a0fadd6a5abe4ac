"""Typed job configuration: one YAML file (or shipped preset) plus ``key.path=value`` overrides.

Every section rejects unknown keys so a typo fails loudly with its dotted path instead of being ignored. The
teachers' sections are in :mod:`tinyllm_ray.teacher_config`, the shared base and fingerprint marks in
:mod:`tinyllm_ray.config_base`; both are re-exported here, the one import path for configs.
Pure logic: imports neither Ray nor torch.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tinyllm_ray.config_base import (  # noqa: F401 - re-exported
    NAME_PATTERN, OPERATIONAL, STUDENT_INPUT, UNLESS_DEFAULT, ConfigError, Strict, fingerprint_view, stable_hash,
)
from tinyllm_ray.teacher_config import (  # noqa: F401 - re-exported
    TEACHER_KINDS, Allocator, AnyTeacher, CustomResources, EngineConfig, Fraction, ImportedTeacherConfig,
    ImportSource, ResourceConfig, SamplingConfig, TeacherConfig,
)

PRESETS_PACKAGE = "tinyllm_ray.presets"


class FieldMapping(Strict):
    """Where each canonical problem field is in a source record: a column name, or a dotted path into nested records
    (``question.stem``); a column whose own name has dots is matched first."""

    id: str | None = "id"
    question: str = "question"
    choices: str | list[str] = Field("choices", description="A column holding the options (list, JSON list or a|b|c), "
                                     "or a list of columns, one per option (e.g. [A, B, C, D]).")
    answer: str = Field("answer", description="Option text, a letter such as B, or with `labels` an option's label.")
    context: str | None = None
    labels: str | None = Field(None, json_schema_extra=UNLESS_DEFAULT,
                               description="Path to the options' labels (e.g. choices.label): an answer equal to a "
                                           "label picks that option.")

    @field_validator("choices")
    @classmethod
    def _columns_given(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and (len(value) < 2 or len(set(value)) != len(value)):
            raise ValueError(f"a list of option columns needs at least two distinct names, got {value}")
        return value


class HFSource(Strict):
    """How ``data.format: hf`` calls the Hugging Face ``datasets`` library (read only for that format)."""

    name: str | None = Field(None, description="The dataset's configuration, e.g. ARC-Easy or main.")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="Files for load_dataset; a mapping names the splits ({train: a.jsonl, validation: b.jsonl}). "
                          "data.path is then a builder (json, csv, parquet) or the folder they are in.")
    revision: str | None = Field(None, description="A hub dataset's branch, tag or commit (pin it: reproducible runs).")
    cache_dir: str | None = Field(None, json_schema_extra=OPERATIONAL,
                                  description="Where datasets keeps its Arrow cache (default: HF_DATASETS_CACHE).")


class DataConfig(Strict):
    format: Literal["demo", "tinyllm", "json", "jsonl", "parquet", "csv", "hf"] = "demo"
    path: str | None = Field(None, description="File or directory; for 'tinyllm' the dataset folder (e.g. .../obqa); for "
                             "'hf' a folder for load_dataset, a save_to_disk folder or a hub id.")
    dataset: str = Field("demo", description="Dataset name recorded on every problem.")
    train_split: str = "train"
    eval_split: str = Field("valid", description="Held-out split for evaluation (use the test split only for final numbers).")
    fields: FieldMapping = FieldMapping()
    answer_is_index: bool = Field(False, description="The answer column holds a 0-based option index, not option text.")
    max_train_problems: int | None = Field(None, ge=1)
    max_eval_problems: int | None = Field(None, ge=1)
    hf: HFSource = Field(HFSource(), json_schema_extra=UNLESS_DEFAULT)

    @model_validator(mode="after")
    def _path_needed(self) -> "DataConfig":
        if self.format != "demo" and not self.path:
            raise ValueError(f"data.path is required for data.format={self.format!r}")
        if self.format != "hf" and self.hf != HFSource():
            raise ValueError(f"data.hf is read only for data.format=hf, not {self.format!r}; remove it")
        if self.answer_is_index and self.fields.labels:
            raise ValueError("data.fields.labels maps answers given as labels: it cannot be used with "
                             "data.answer_is_index")
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
    dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Weights, gradients and activations (DeepSpeed bf16 / fp16 keep fp32 master weights). "
                            "T5 (FLAN-T5) students: bf16 or fp32; DeepSpeed's fp16 casts every parameter and T5 "
                            "overflows in fp16 (a warning says so).")
    autocast: Literal["off", "bf16"] = Field(
        "off", json_schema_extra=UNLESS_DEFAULT, description="bf16: mixed precision with fp32 weights and optimizer: the forward and backward matmuls "
                           "run in bf16 under torch.autocast (DeepSpeed torch_autocast); needs dtype fp32. Fast on "
                           "CPUs with AVX512-BF16 or AMX and on GPUs.")
    micro_batch_size: int = Field(4, ge=1, description="Problems per worker per step (each expands to 1+M sequences).")
    length_groups: int = Field(2, ge=1, le=8, json_schema_extra=OPERATIONAL, description="Forward passes per micro-batch, its sequences grouped by "
                               "length so short answers are not padded to rationale length (1: one padded batch). ZeRO-3 "
                               "trains 1 (its parameter prefetch needs the same passes every step).")
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
    log_every_steps: int = Field(10, ge=1, json_schema_extra=OPERATIONAL, description="Rank 0 logs a progress line (OUTPUT_DIR/logs/console.log) and records the loss every N steps; metrics sinks get every step.")
    checkpoint_every_steps: int | None = Field(
        50, ge=1, json_schema_extra=OPERATIONAL, description="Save a resumable DeepSpeed checkpoint every N optimiser steps (None: final export only).")
    max_failures: int = Field(2, ge=-1, json_schema_extra=OPERATIONAL, description="Restarts of the worker group from the latest checkpoint (-1: no limit).")
    keep_checkpoints: bool = Field(
        False, json_schema_extra=OPERATIONAL,
        description="Keep the run's Ray Train checkpoints (<output_dir>/ray_train/<run>: the final export and the "
                    "last DeepSpeed state) after the student is written; by default they are deleted then.")
    rationale_filter: RationaleFilter = RationaleFilter()

    @property
    def resolved_zero_stage(self) -> int:
        """The ZeRO stage DeepSpeed runs: ``auto`` is 0 for one worker (ZeRO-1/2/3 only add copies into and out of
        flat partitions there) and 2 for more (optimizer state and gradients sharded)."""
        if self.zero_stage == "auto":
            return 0 if self.num_workers == 1 else 2
        return self.zero_stage

    @model_validator(mode="after")
    def _autocast_over_fp32(self) -> "TrainingConfig":
        if self.autocast != "off" and self.dtype != "fp32":
            raise ValueError(f"training.autocast={self.autocast} keeps fp32 weights: it needs training.dtype=fp32, "
                             f"got {self.dtype} (use one or the other)")
        return self

    @field_validator("alpha")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if weight < 0:
                raise ValueError(f"alpha for teacher {name!r} must be >= 0, got {weight}")
        return value


class StudentEngineConfig(Strict):
    """The vLLM engine that scores a decoder-only student (``evaluation.backend`` vllm): one per evaluation actor."""

    dtype: str = Field("auto", description="auto: the checkpoint's dtype (config.json), as transformers loads it; "
                       "vLLM's own auto would run a float32 student in 16 bits.")
    max_model_len: int = Field(2048, ge=64, description="Longest prompt + max_new_tokens (or prompt + option) "
                               "the engine takes; a longer one fails the evaluation, naming this key.")
    enforce_eager: bool = Field(True, json_schema_extra=OPERATIONAL,
                                description="No CUDA graphs / compilation: starts in seconds (CPU needs it).")
    kv_cache_memory_bytes: int | None = Field(
        256 * 2**20, ge=1, json_schema_extra=OPERATIONAL,
        description="KV-cache size; vLLM-CPU cannot size it itself (must hold max_model_len tokens). None on GPU: "
                    "gpu_memory_utilization sizes it.")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, json_schema_extra=OPERATIONAL)
    allocator: Allocator = Field("auto", json_schema_extra=OPERATIONAL,
                                 description="As teachers[].engine.allocator: auto is jemalloc on CPU.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Any other vllm.LLM keyword.")


class EvaluationConfig(Strict):
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(16, ge=1, description="transformers backend: problems per generate call, or (problem, "
                            "option) rows per log-likelihood pass (vLLM batches a whole call itself).")
    backend: Literal["auto", "vllm", "transformers"] = Field(
        "auto", json_schema_extra=UNLESS_DEFAULT,
        description="What runs the student: vllm (decoder-only students only), transformers, or auto: vllm for a "
                    "decoder-only student when vLLM is installed, else transformers (seq2seq students always). "
                    "On CPU vLLM generates faster; for method loglikelihood transformers is faster there "
                    "(benchmarks/RESULTS.md).")
    actors: int = Field(1, ge=1, json_schema_extra=OPERATIONAL,
                        description="Evaluation actors (Ray Data actor pool), each loading the student once with "
                                    "one training worker's resources.")
    problems_per_call: int = Field(64, ge=1, json_schema_extra=OPERATIONAL,
                                   description="Problems per actor call: the unit of progress and of retries.")
    # in the report's fingerprint only when vLLM scores the student (evaluate.evaluation_fingerprint)
    vllm: StudentEngineConfig = Field(StudentEngineConfig(), json_schema_extra=OPERATIONAL)
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
    trial_resources: CustomResources = Field(
        default_factory=dict, json_schema_extra=OPERATIONAL,
        description="Custom Ray resources each trial's driver (the Tune trial that waits on its Ray Train run) asks "
        "for instead of a tenth of a CPU, e.g. {tinyllm_driver: 1}: a resource only the head or a CPU group "
        "advertises keeps the drivers, and the autoscaler, off GPU nodes (cluster/). Empty: 0.1 CPU anywhere.")


class JobConfig(Strict):
    name: str = Field("tinyllm", pattern=NAME_PATTERN)
    output_dir: str = Field("runs/tinyllm", description="A local path; on a cluster, storage every node mounts at "
                            "the same path (NFS, EFS, a PVC). Object-store URLs (s3://, gs://) are refused: mount "
                            "the bucket instead.")
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

    @field_validator("output_dir")
    @classmethod
    def _local_path(cls, value: str) -> str:
        # Every stage writes with local file operations (atomic renames, Ray Train's storage_path as a folder)
        if "://" in value:
            raise ValueError(f"output_dir {value!r} is a URL: runs are written to a local path or to storage every "
                             "node mounts at the same path (NFS, EFS, a PVC); mount an object store to use it")
        return value

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
