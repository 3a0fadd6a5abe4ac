"""``evaluation.method: generate`` (the paper's): the student's greedy answer after the ``predict:`` prompt,
correct when it equals the gold option text (case and whitespace normalised, :func:`tinyllm_ray.prompts.exact_match`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tinyllm_ray import prompts
from tinyllm_ray.scoring import ScoringOptions, Student, StudentBackend, student_prompts


def rows(problems: Sequence[Mapping[str, Any]], answers: Sequence[str]) -> list[dict[str, Any]]:
    """One row per problem: the generated answer and whether it matches the gold option text."""
    return [{"id": p["id"], "prediction": answer, "gold": p["answer"],
             "correct": prompts.exact_match(answer, p["answer"])} for p, answer in zip(problems, answers)]


class GenerateScorer:
    name = "generate"

    def predict(self, student: StudentBackend, problems: Sequence[Mapping[str, Any]],
                options: ScoringOptions) -> list[dict[str, Any]]:
        return rows(problems, student.greedy_answers(student_prompts(problems, options.task_prefix), options))


def greedy_answers(student: Student, texts: Sequence[str], batch_size: int, max_new_tokens: int) -> list[str]:
    """The transformers backend's greedy continuations of ``texts``, ``batch_size`` at a time (left-padded),
    stripped."""
    import torch

    tokenizer, model = student.tokenizer, student.model
    answers: list[str] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(student.device)
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        if not student.seq2seq:
            output = output[:, encoded["input_ids"].shape[1]:]
        answers.extend(t.strip() for t in tokenizer.batch_decode(output, skip_special_tokens=True))
    return answers
