"""Pure parts of the generate stage: shard layout and the per-shard stats that add up to a teacher's manifest."""

from __future__ import annotations

import pytest

from tinyllm_ray.generate import merge_stats, plan_shards, rationale_stats

PROBLEMS = {
    "p1": {"id": "p1", "answer_index": 0, "choices": ["heat", "cold"]},
    "p2": {"id": "p2", "answer_index": 1, "choices": ["lungs", "gills"]},
    "p3": {"id": "p3", "answer_index": 1, "choices": ["oxygen", "carbon dioxide"]},
}


def row(id_, rationale="Heat melts ice because it adds energy.", error=None, finish="stop", generated=7):
    return {"id": id_, "rationale": rationale, "error": error, "finish_reason": finish,
            "num_prompt_tokens": 10, "num_generated_tokens": generated}


@pytest.mark.parametrize("problems,size,expected", [
    (0, 4, []),
    (3, 4, [(0, 0, 3)]),
    (8, 4, [(0, 0, 4), (1, 4, 4)]),
    (9, 4, [(0, 0, 4), (1, 4, 4), (2, 8, 1)]),
])
def test_plan_shards_covers_every_problem_once(problems, size, expected):
    shards = plan_shards(problems, size)
    assert [(s["shard"], s["offset"], s["rows"]) for s in shards] == expected
    assert sum(s["rows"] for s in shards) == problems


def test_stats_of_shards_add_up_to_stats_of_the_whole():
    rows = [row("p1"), row("p2", error="prompt too long", generated=0), row("p3", rationale="", finish="length")]
    whole = rationale_stats(rows, PROBLEMS)
    parts = [rationale_stats(rows[:1], PROBLEMS), rationale_stats(rows[1:2], PROBLEMS),
             rationale_stats(rows[2:], PROBLEMS)]
    assert merge_stats(parts) == whole
    assert whole["rows"] == 3 and whole["errors"] == 1 and whole["first_error"] == "prompt too long"
    assert whole["empty"] == 1 and whole["generated_tokens"] == 14 and whole["prompt_tokens"] == 30


def test_merge_keeps_the_first_shards_error():
    first = rationale_stats([row("p1", error="first")], PROBLEMS)
    second = rationale_stats([row("p2", error="second")], PROBLEMS)
    assert merge_stats([rationale_stats([row("p3")], PROBLEMS), first, second])["first_error"] == "first"
    assert merge_stats([]) == {"first_error": None, "rows": 0, "errors": 0}
