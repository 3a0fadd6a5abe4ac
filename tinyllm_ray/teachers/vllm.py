"""The vLLM teacher: one engine per actor, shared by the actor's threads through an :class:`EngineLoop`, so the
engine keeps batching across shard boundaries. vLLM is imported in the actor only, never by the driver."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from tinyllm_ray import prompts
from tinyllm_ray.config import TeacherConfig
from tinyllm_ray.generation_plan import GenerationError
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.teachers.base import Rationales, placement_args, rationale_row
from tinyllm_ray.teachers.engine_loop import EngineLoop
from tinyllm_ray.teachers.feeding import SequenceGate, sequences_to_admit, underfed_warning

log = logging.getLogger("tinyllm_ray")


def prepare(teacher: TeacherConfig, layout: RunLayout) -> str:
    """On the driver: refuse a CPU engine without a KV-cache size, and resolve (for builtins: build) the model."""
    from tinyllm_ray.models import resolve_model

    if not teacher.resources.num_gpus_per_actor and not teacher.engine.kv_cache_memory_bytes:
        raise GenerationError(f"teacher {teacher.name!r} runs on CPU: set engine.kv_cache_memory_bytes "
                              "(e.g. 268435456); vLLM-CPU cannot size its KV cache itself")
    return resolve_model(teacher.model)


def remote_args(teacher: TeacherConfig) -> dict[str, Any]:
    """The actor's resources, and the environment its engine needs (thread count, allocator)."""
    from tinyllm_ray.runtime import teacher_env

    on_gpu = teacher.resources.num_gpus_per_actor > 0
    return {**placement_args(teacher.resources),
            "runtime_env": {"env_vars": teacher_env(on_gpu, teacher.engine.allocator)}}


def engine_kwargs(teacher: TeacherConfig, model_path: str) -> dict[str, Any]:
    """``vllm.LLM`` keywords from ``teachers[].engine``."""
    engine = teacher.engine
    kwargs = dict(model=model_path, dtype=engine.dtype, max_model_len=engine.max_model_len,
                  enforce_eager=engine.enforce_eager, tensor_parallel_size=engine.tensor_parallel_size,
                  seed=teacher.sampling.seed or 0, **engine.extra)
    if teacher.resources.num_gpus_per_actor:
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
        if engine.gpus_per_engine > 1:
            # the actor already holds all its GPUs: vLLM's own processes, not Ray actors (unless the job says)
            kwargs.setdefault("distributed_executor_backend", "mp")
    if engine.kv_cache_memory_bytes:
        kwargs["kv_cache_memory_bytes"] = engine.kv_cache_memory_bytes
    return kwargs


def scheduler_max_num_seqs(llm) -> int:
    """The most sequences a started ``vllm.LLM`` schedules at once: vLLM sizes it from the card (1024 on cards of
    70 GB or more, else 256) unless ``engine.extra`` sets it."""
    return llm.llm_engine.vllm_config.scheduler_config.max_num_seqs


def render_prompt(tokenizer, teacher: TeacherConfig, problem: dict, demos: list[dict], mode: str,
                  chat: bool) -> str:
    """The teacher's prompt text for one problem: teacher forcing (rationale) or the bare question (answer), in the
    model's chat template (with the teacher's system prompt) when ``chat``."""
    build = prompts.teacher_forcing_prompt if mode == "rationale" else prompts.answer_prompt
    text = build(problem, demos, teacher.instruction)
    if not chat:
        return text
    messages = [{"role": "system", "content": teacher.system_prompt}] if teacher.system_prompt else []
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_token_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    """Token ids as vLLM makes them: a plain prompt gets the tokenizer's special tokens (BOS), a chat-rendered one
    does not, its template wrote them already (vLLM's chat path does the same; else Llama-2 starts with two BOS)."""
    return tokenizer.encode(prompt, add_special_tokens=not chat)


class VLLMTeacher:
    """A :class:`~tinyllm_ray.teachers.base.Teacher` backed by one in-process ``vllm.LLM``. Rows whose prompt is
    too long or that the engine rejects come back with ``error`` set; an engine that dies raises (and is shut
    down first). ``close`` shuts the engine down."""

    def __init__(self, teacher: TeacherConfig, model_path: str):
        from vllm import LLM

        kwargs = engine_kwargs(teacher, model_path)
        self.teacher = teacher
        self.tokenizer_lock = threading.Lock()  # calls render in their own threads; the engine loop tokenises too
        self.loop = EngineLoop(lambda: LLM(**kwargs), add_lock=self.tokenizer_lock)  # built in the loop's thread
        try:
            self.tokenizer = self.loop.llm.get_tokenizer()
            self.max_model_len = teacher.engine.max_model_len
            self.use_chat = teacher.chat_template == "auto" and bool(getattr(self.tokenizer, "chat_template", None))
            self._params: dict[str, Any] = {}  # SamplingParams by their JSON
            self.max_num_seqs = scheduler_max_num_seqs(self.loop.llm)
            self.gate = SequenceGate(sequences_to_admit(teacher.resources, self.max_num_seqs))
            warning = underfed_warning(teacher.name, teacher.resources, teacher.engine.extra, self.max_num_seqs)
            if warning:
                log.warning(warning)
        except BaseException:
            self.loop.close()  # a half-built teacher must not keep its engine
            raise

    def render(self, problem: dict, demos: list[dict], mode: str) -> str:
        return render_prompt(self.tokenizer, self.teacher, problem, demos, mode, self.use_chat)

    def rationales(self, problems: list[dict], demos: list[list[dict]], mode: str, sampling: dict) -> Rationales:
        """The shard's rows, and how many of their prompt tokens vLLM's prefix cache served (not computed)."""
        with self.tokenizer_lock:
            rows = [rationale_row(self.teacher, p, sampling, self.render(p, d, mode)) for p, d in zip(problems, demos)]
            # Tokenised here, in the caller's thread, and handed to the engine as token ids: the engine thread then
            # spends no time tokenising while it could be stepping.
            token_ids = [prompt_token_ids(self.tokenizer, row["prompt"], self.use_chat) for row in rows]
        runnable = []
        for row, ids in zip(rows, token_ids):
            row["num_prompt_tokens"] = len(ids)
            if len(ids) >= self.max_model_len:
                row["error"] = (f"prompt has {len(ids)} tokens, engine.max_model_len is "
                                f"{self.max_model_len}: raise max_model_len or lower prompts.num_demos")
            else:
                runnable.append((row, {"prompt_token_ids": ids, "prompt": row["prompt"]}))
        with self.gate.admit(len(runnable)):
            cached = self._generate(runnable, self._sampling_params(sampling))
        return Rationales(rows, cached)

    def close(self) -> None:
        self.loop.close()

    def _sampling_params(self, sampling: dict):
        from vllm import SamplingParams

        key = json.dumps(sampling, sort_keys=True)
        if key not in self._params:
            self._params[key] = SamplingParams(**sampling)
        return self._params[key]

    def _generate(self, runnable: list[tuple[dict, dict]], params) -> int:
        """Fill each row from the engine's output for its prompt (a vLLM ``TokensPrompt``); returns the prompt tokens
        served from the prefix cache."""
        outputs = self.loop.generate([prompt for _, prompt in runnable], params)
        cached = 0
        for (row, _), output in zip(runnable, outputs):
            if isinstance(output, Exception):
                row["error"] = f"{type(output).__name__}: {output}"[:2000]
                continue
            cached += output.num_cached_tokens or 0
            completion = output.outputs[0]
            row.update(rationale=completion.text.strip(), num_generated_tokens=len(completion.token_ids),
                       finish_reason=str(completion.finish_reason or "stop"))
        return cached
