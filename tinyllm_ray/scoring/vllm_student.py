"""The vLLM backend of a decoder-only student (``evaluation.backend: vllm``, or ``auto`` where vLLM is installed):
one in-process ``vllm.LLM`` per evaluation actor, handed a whole call's problems at once (the engine batches them).

It gives the scorers what :class:`~tinyllm_ray.scoring.Student` gives, computed the same way so the rows mean the
same: prompts and options are tokenised by the student's own HF tokenizer with no special tokens and handed to the
engine as token ids; greedy answers are ``SamplingParams(temperature=0, max_tokens=max_new_tokens)`` decoded by
that tokenizer (skipping special tokens, stripped); an option's log-likelihood is read from the prompt
log-probabilities of the (prompt + option) token sequence (raw log-softmax, vLLM's default ``logprobs_mode``).
vLLM is imported in the actor only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyllm_ray.config import StudentEngineConfig
from tinyllm_ray.errors import TinyLLMError
from tinyllm_ray.scoring import ScoringOptions
from tinyllm_ray.scoring.loglikelihood import continuation_logprob


class EvaluationError(TinyLLMError):
    """The student cannot be scored as configured (a prompt longer than the engine takes, a CPU engine unsized)."""


def checkpoint_dtype(model_dir: str) -> str:
    """The dtype the student's ``config.json`` names (``dtype``, or the older ``torch_dtype``; float32 if neither):
    what transformers' ``dtype="auto"`` loads. vLLM's own ``auto`` would run a float32 checkpoint in 16 bits."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def engine_kwargs(engine: StudentEngineConfig, model_dir: str, on_gpu: bool) -> dict[str, Any]:
    """``vllm.LLM`` keywords for the student from ``evaluation.vllm`` (on the driver)."""
    if not on_gpu and not engine.kv_cache_memory_bytes:
        raise EvaluationError("the student's vLLM engine runs on CPU: set evaluation.vllm.kv_cache_memory_bytes "
                              "(e.g. 268435456); vLLM-CPU cannot size its KV cache itself")
    dtype = checkpoint_dtype(model_dir) if engine.dtype == "auto" else engine.dtype
    kwargs: dict[str, Any] = dict(model=model_dir, tokenizer=model_dir, dtype=dtype,
                                  max_model_len=engine.max_model_len, enforce_eager=engine.enforce_eager, seed=0,
                                  **engine.extra)
    if on_gpu:
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
    if engine.kv_cache_memory_bytes:
        kwargs["kv_cache_memory_bytes"] = engine.kv_cache_memory_bytes
    return kwargs


def too_long(lengths: Sequence[int], extra: int, max_model_len: int, what: str) -> str | None:
    """Why the longest of ``lengths`` plus ``extra`` tokens does not fit the engine (None when all fit)."""
    longest = max(lengths, default=0)
    if longest + extra <= max_model_len:
        return None
    return (f"a student {what} of {longest} tokens + {extra} does not fit evaluation.vllm.max_model_len "
            f"{max_model_len}: raise evaluation.vllm.max_model_len (and kv_cache_memory_bytes), or use "
            "evaluation.backend transformers")


class VLLMStudent:
    """A :class:`~tinyllm_ray.scoring.StudentBackend` on one ``vllm.LLM`` (decoder-only students)."""

    seq2seq = False

    def __init__(self, kwargs: Mapping[str, Any]):
        from transformers import AutoTokenizer
        from vllm import LLM

        # the transformers backend's tokenizer, so both backends feed the model the same token ids
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs["tokenizer"])
        self.max_model_len = int(kwargs["max_model_len"])
        self.llm = LLM(**kwargs)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _run(self, sequences: list[list[int]], params) -> list:
        from vllm.inputs import TokensPrompt

        return self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in sequences], params, use_tqdm=False)

    def greedy_answers(self, texts: Sequence[str], options: ScoringOptions) -> list[str]:
        from vllm import SamplingParams

        prompts = [self._encode(text) for text in texts]
        problem = too_long([len(p) for p in prompts], options.max_new_tokens, self.max_model_len,
                           "prompt (with evaluation.max_new_tokens)")
        if problem:
            raise EvaluationError(problem)
        params = SamplingParams(temperature=0.0, max_tokens=options.max_new_tokens, detokenize=False)
        outputs = self._run(prompts, params)
        return [self.tokenizer.decode(list(o.outputs[0].token_ids), skip_special_tokens=True).strip()
                for o in outputs]

    def option_loglikelihoods(self, texts: Sequence[str], choices: Sequence[Sequence[str]],
                              options: ScoringOptions) -> list[list[float]]:
        from vllm import SamplingParams

        prompts = [self._encode(text) for text in texts]
        rows = [(i, j, option) for i, opts in enumerate(choices)
                for j, option in enumerate(self._encode(o) for o in opts) if option]
        problem = too_long([len(prompts[i]) + len(option) for i, _, option in rows], 1, self.max_model_len,
                           "prompt + option")
        if problem:
            raise EvaluationError(problem)
        if any(not prompt for prompt in prompts):
            raise EvaluationError("a student prompt tokenised to no tokens: nothing predicts an option's first token")
        out = [[0.0] * len(opts) for opts in choices]
        if not rows:
            return out
        # max_tokens 1: the engine must sample something; prompt_logprobs 0: each position's own token only
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        outputs = self._run([prompts[i] + option for i, _, option in rows], params)
        for (i, j, option), output in zip(rows, outputs):
            out[i][j] = continuation_logprob(output.prompt_logprobs, len(prompts[i]), option)
        return out
