"""Quality flags for teacher rationales. Pure Python over plain data; no Ray, no torch.

A rationale can carry any of four flags:

- ``empty``: no non-whitespace text.
- ``degenerate``: heavy verbatim repetition. Rule: drop the closing answer statement (from the last
  "the answer is" on: FLAN-T5 restates the option text there), split the rest into lower-cased word tokens
  (``\\w+``); a token is *repeated* when it lies inside a word 5-gram that already occurred earlier in the
  text. The rationale is degenerate when it has at least 10 tokens and at least half of them are repeated,
  i.e. most of the text only restates earlier text ("soft, soft, soft, ...", a sentence or line loop).
  Templated listing ("The sun is responsible for X.\nThe sun is responsible for Y.\n...") with one repeated
  line stays below it. On the real TinyLLM train rationales (obqa, arc, pubmedqa; 13,148 texts) the rule
  flags 4.3% (510 of 562 from LLaMA-2); a 0.4 threshold flags 9.0%, mostly templated but distinct reasoning.
- ``truncated``: the engine stopped at the token limit (``finish_reason == "length"``).
- ``contradicting``: the rationale ends by naming another option than the gold one
  (:func:`tinyllm_ray.prompts.rationale_contradicts`).

:func:`drop_reason` applies a ``RationaleFilter`` (from the job config) to one rationale.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tinyllm_ray import prompts

FLAGS = ("empty", "degenerate", "truncated", "contradicting")
# Order in which a dropped rationale is attributed to one reason (so the dropped_* counts add up).
DROP_REASONS = ("empty", "short", "degenerate", "truncated", "contradicting")

REPEAT_NGRAM = 5  # tokens per n-gram in the repetition rule
REPEAT_MIN_TOKENS = 2 * REPEAT_NGRAM  # shorter texts cannot hold a repeat worth judging
REPEAT_MAX_SHARE = 0.5  # degenerate when at least this share of tokens repeats earlier text

_WORD = re.compile(r"\w+")
_ANSWER_STATEMENT = re.compile(r"the answer is\b", re.IGNORECASE)


# "Thus, the answer is (b) gills": the closing statement of a teacher-forced rationale, with its option letter.
_ANSWER_LINE = re.compile(r"the answer is \(?[A-Za-z]\)[^\n]*", re.IGNORECASE)


def cut_after_answer(text: str) -> tuple[str, bool]:
    """``text`` up to the end of the line of its first "the answer is (x) ..." statement, and whether anything
    (other than whitespace) was cut. The paper's FLAN-T5-xl rationales run on from there into a question the
    model made up ("\n\nQ: ..."); a text without such a statement is kept whole."""
    match = _ANSWER_LINE.search(text)
    if match is None or not text[match.end():].strip():
        return text.strip(), False
    return text[:match.end()].strip(), True


def words(text: str) -> list[str]:
    """Word tokens (runs of letters, digits and underscores), lower-cased; also what ``min_words`` counts."""
    return _WORD.findall(str(text).lower())


def without_answer_statement(text: str) -> str:
    """``text`` up to its last "the answer is" (the closing statement that may echo an option verbatim)."""
    matches = list(_ANSWER_STATEMENT.finditer(text))
    return text[:matches[-1].start()] if matches else text


def repeated_share(text: str, n: int = REPEAT_NGRAM) -> float:
    """Share of word tokens lying inside an n-gram that already occurred earlier in the text (0.0 to 1.0)."""
    tokens = words(text)
    if len(tokens) < n:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeated = [False] * len(tokens)
    for start in range(len(tokens) - n + 1):
        gram = tuple(tokens[start:start + n])
        if gram in seen:
            repeated[start:start + n] = [True] * n
        seen.add(gram)
    return sum(repeated) / len(tokens)


def is_degenerate(text: str) -> bool:
    """Without its answer statement, at least ``REPEAT_MIN_TOKENS`` tokens, of which at least
    ``REPEAT_MAX_SHARE`` repeat earlier text."""
    body = without_answer_statement(str(text))
    return len(words(body)) >= REPEAT_MIN_TOKENS and repeated_share(body) >= REPEAT_MAX_SHARE


def quality_flags(rationale: str, finish_reason: str, answer_index: int, choices: Sequence[str]) -> set[str]:
    """The subset of :data:`FLAGS` that applies to one rationale (see the module docstring for the rules)."""
    text = str(rationale or "")
    flags = set()
    if not text.strip():
        flags.add("empty")
    elif is_degenerate(text):
        flags.add("degenerate")
    if finish_reason == "length":
        flags.add("truncated")
    if text.strip() and prompts.rationale_contradicts(text, int(answer_index), list(choices)):
        flags.add("contradicting")
    return flags


def row_flags(row: Mapping[str, Any]) -> set[str]:
    """Flags of a rationale row joined with its problem; ``contradicting`` is only checked when the row
    carries ``answer_index`` and ``choices``."""
    has_problem = row.get("answer_index") is not None and row.get("choices") is not None
    flags = quality_flags(row.get("rationale") or "", str(row.get("finish_reason") or ""),
                          int(row["answer_index"]) if has_problem else 0, list(row["choices"]) if has_problem else [])
    return flags if has_problem else flags - {"contradicting"}


def summarize_flags(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Counts over rationale rows: ``checked`` (rows without an ``error``), one count per flag, and ``flagged``
    (rows with any flag). Rows are mappings with ``rationale`` and ``finish_reason``, plus ``answer_index``
    and ``choices`` for the contradiction check. Failed rows (a non-empty ``error``) are not rationales: skipped."""
    counts = {"checked": 0, **{flag: 0 for flag in FLAGS}, "flagged": 0}
    for row in rows:
        if row.get("error"):
            continue
        flags = row_flags(row)
        counts["checked"] += 1
        counts["flagged"] += bool(flags)
        for flag in flags:
            counts[flag] += 1
    return counts


def drop_reason(rationale: str, finish_reason: str, answer_index: int, choices: Sequence[str],
                rationale_filter: Any) -> str | None:
    """The first reason in :data:`DROP_REASONS` for which ``rationale_filter`` drops this rationale, or None.

    ``rationale_filter`` has ``drop_empty``, ``drop_degenerate``, ``drop_truncated``, ``drop_contradicting`` and
    ``min_words`` (``config.RationaleFilter``); "short" means fewer than ``min_words`` word tokens.
    """
    flags = quality_flags(rationale, finish_reason, answer_index, choices)
    short = "empty" not in flags and len(words(rationale)) < rationale_filter.min_words
    for reason in DROP_REASONS:
        if reason == "short":
            if short:
                return reason
        elif reason in flags and getattr(rationale_filter, f"drop_{reason}"):
            return reason
    return None
