"""How a student's answers to multiple-choice problems are scored: the seam where scoring methods vary.

A :class:`Scorer` turns a loaded student and a list of problems into one row per problem
(``id``, ``prediction``, ``gold``, ``correct``, plus what the method adds). One module per method:

- ``generate`` (the paper's, the default): greedy answer after the ``predict:`` prompt, exact match to the gold
  option text (case and whitespace normalised).
- ``loglikelihood`` (what lm-evaluation-harness reports for ARC / OpenBookQA as ``acc_norm``): the option whose
  tokens have the highest length-normalised log-likelihood after the same prompt; one forward pass per option.

``evaluation.method: both`` runs the two on the same loaded student. Torch and transformers are imported only
inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tinyllm_ray import prompts

METHODS = ("generate", "loglikelihood")


@dataclass
class Student:
    """A loaded HF student: model in eval mode on ``device``, its tokenizer (left padding, a pad token)."""

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


@dataclass(frozen=True)
class ScoringOptions:
    """``batch_size``: problems per ``generate`` call, or (problem, option) sequences per log-likelihood pass."""

    task_prefix: str
    batch_size: int = 16
    max_new_tokens: int = 32


class Scorer(Protocol):
    """One scoring method: one result row per problem, in the problems' order."""

    name: str

    def predict(self, student: Student, problems: Sequence[Mapping[str, Any]],
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


def score_student(model_dir: str, seq2seq: bool, problems: list[dict], methods: Sequence[str],
                  options: ScoringOptions, progress: Any = None) -> dict[str, list[dict[str, Any]]]:
    """Load the student once and score it with every method (a Ray task in `evaluate`): rows per method.
    ``progress``: a :class:`~tinyllm_ray.progress_channel.ProgressChannel` the batches are reported to."""
    from tinyllm_ray.progress_channel import install

    install(progress)
    student = Student.load(model_dir, seq2seq)
    return {method: scorer(method).predict(student, problems, options) for method in methods}
