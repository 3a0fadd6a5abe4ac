"""Prompt building and answer parsing for teachers and student. Pure functions over plain data.

Teacher prompts follow the TinyLLM teacher-forcing chain of thought: the teacher sees the question, the
options and the gold answer, and is asked why it is right. Student inputs use one prefix per task.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

LETTERS = string.ascii_lowercase
RATIONALE_CUE = "Rationale:\nLet's think step by step."


def letter(index: int) -> str:
    if not 0 <= index < len(LETTERS):
        raise ValueError(f"option index {index} out of range (at most {len(LETTERS)} options)")
    return LETTERS[index]


def format_options(choices: Sequence[str]) -> str:
    return "\n".join(f"({letter(i)}) {choice}" for i, choice in enumerate(choices))


def _question_text(problem: Mapping[str, Any]) -> str:
    context = problem.get("context")
    return f"{context}\n{problem['question']}" if context else str(problem["question"])


def teacher_block(problem: Mapping[str, Any], with_answer: bool, rationale_cue: bool = False,
                  rationale: str | None = None) -> str:
    """One problem in the paper's README template: Question / Options / Answer [/ Rationale]."""
    parts = [f"Question:\n{_question_text(problem)}", f"Options:\n{format_options(problem['choices'])}"]
    if not with_answer:
        parts.append("Answer:")
        return "\n".join(parts)
    index = int(problem["answer_index"])
    parts.append(f"Answer:\n({letter(index)}) {problem['choices'][index]}")
    if rationale:
        parts.append(f"{RATIONALE_CUE} {rationale.strip()}")
    elif rationale_cue:
        parts.append(RATIONALE_CUE)
    return "\n".join(parts)


DEMO_SAMPLERS = ("per_problem", "fixed")


def demo_positions(pool_size: int, query_position: int | None, query_id: str, k: int, seed: int,
                   sampler: str = "per_problem") -> list[int]:
    """Positions in a pool of ``pool_size`` problems of the k demonstrations for one query, never the query's own
    ``query_position`` (None when the query is not in the pool).

    ``per_problem`` (the paper): a random draw per (seed, query id). O(k), whatever the pool size: ``random.sample``
    draws positions that depend only on the population's length, so sampling ``range(n)`` picks exactly what
    sampling the pool without the query would (:func:`sample_demos`).
    ``fixed``: one draw of k + 1 per seed, shared by every query; a query among the first k gets the extra one in its
    place. Almost every prompt then starts with the same demonstrations, which an engine's prefix cache computes once.
    """
    if sampler not in DEMO_SAMPLERS:
        raise ValueError(f"unknown demo sampler {sampler!r}; expected one of {', '.join(DEMO_SAMPLERS)}")
    if k == 0:
        return []
    others = pool_size - (query_position is not None)
    if others < k:
        raise ValueError(f"need {k} demonstrations but the train split has only {max(others, 0)} other problems")
    if sampler == "fixed":
        shared = random.Random(f"{seed}:fixed").sample(range(pool_size), min(k + 1, pool_size))
        return [p for p in shared if p != query_position][:k]
    rng = random.Random(f"{seed}:{query_id}")
    picks = rng.sample(range(others), k)
    return picks if query_position is None else [p + (p >= query_position) for p in picks]


def sample_demos(
    pool: Sequence[Mapping[str, Any]], query_id: str, k: int, seed: int, sampler: str = "per_problem"
) -> list[Mapping[str, Any]]:
    """k demonstrations from ``pool`` excluding the query (see :func:`demo_positions`)."""
    position = next((i for i, p in enumerate(pool) if p["id"] == query_id), None)
    return [pool[i] for i in demo_positions(len(pool), position, query_id, k, seed, sampler)]


def teacher_forcing_prompt(
    problem: Mapping[str, Any], demos: Sequence[Mapping[str, Any]], instruction: str = ""
) -> str:
    """Prompt asking a teacher to explain the gold answer.

    Demos show their answers, and a rationale only when one is supplied (``demo_rationale``): an empty
    "Let's think step by step." after each demo teaches small models to write nothing.
    """
    blocks = [teacher_block(d, with_answer=True, rationale=d.get("demo_rationale")) for d in demos]
    blocks.append(teacher_block(problem, with_answer=True, rationale_cue=True))
    body = "\n\n".join(blocks)
    return f"{instruction.strip()}\n\n{body}" if instruction.strip() else body


def answer_prompt(problem: Mapping[str, Any], demos: Sequence[Mapping[str, Any]], instruction: str = "") -> str:
    """Prompt asking a teacher for the answer without the gold answer (teacher accuracy)."""
    blocks = []
    for demo in demos:
        index = int(demo["answer_index"])
        blocks.append(f"{teacher_block(demo, with_answer=False)}\n({letter(index)}) {demo['choices'][index]}")
    blocks.append(teacher_block(problem, with_answer=False))
    body = "\n\n".join(blocks)
    return f"{instruction.strip()}\n\n{body}" if instruction.strip() else body


def teacher_prompt(problem: Mapping[str, Any], demos: Sequence[Mapping[str, Any]], mode: str,
                   instruction: str = "") -> str:
    """A teacher's prompt text for ``mode``: "rationale" (teacher forcing, the gold answer given) or "answer"."""
    if mode not in ("rationale", "answer"):
        raise ValueError(f"unknown teacher mode {mode!r}; expected rationale or answer")
    build = teacher_forcing_prompt if mode == "rationale" else answer_prompt
    return build(problem, demos, instruction)


def chat_messages(text: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """A teacher prompt as chat messages: the optional system prompt, then the prompt as the user's turn."""
    return [*([{"role": "system", "content": system_prompt}] if system_prompt else []),
            {"role": "user", "content": text}]


def student_input(problem: Mapping[str, Any]) -> str:
    """The student's view of a problem: ``{question}\\nAnswer Choices:\\n(a) ...``."""
    return f"{_question_text(problem)}\nAnswer Choices:\n{format_options(problem['choices'])}"


def student_prompt(prefix: str, problem_input: str) -> str:
    return f"{prefix}{problem_input}\n"


# ---------------------------------------------------------------- parsing

def normalize(text: str) -> str:
    return " ".join(str(text).lower().split()).strip(" .")


def exact_match(prediction: str, gold: str) -> bool:
    return normalize(prediction) == normalize(gold)


_LETTER_PATTERN = re.compile(r"\(([a-z])\)")


def parse_choice(generated: str, choices: Sequence[str]) -> int | None:
    """Index of the option a free-text answer picks, or None: first an option text, then a '(x)' letter."""
    first_line = normalize(generated.strip().split("\n", 1)[0] if generated.strip() else "")
    for index, choice in enumerate(choices):
        if first_line == normalize(choice):
            return index
    match = _LETTER_PATTERN.search(generated.lower())
    if match and LETTERS.index(match.group(1)) < len(choices):
        return LETTERS.index(match.group(1))
    text = normalize(generated)
    hits = [i for i, choice in enumerate(choices) if normalize(choice) and normalize(choice) in text]
    return hits[0] if len(hits) == 1 else None


def rationale_contradicts(rationale: str, answer_index: int, choices: Sequence[str]) -> bool:
    """True when a rationale ends by naming a different option than the gold one ("the answer is (c)")."""
    named = re.findall(r"answer is\s*\(([a-z])\)", rationale.lower())
    if not named:
        return False
    final = LETTERS.index(named[-1])
    return final < len(choices) and final != answer_index
