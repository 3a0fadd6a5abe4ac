"""Pure parts of the generate stage: shard layout, the per-shard stats that add up to a teacher's manifest, and the
actors' demonstrations."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tinyllm_ray.generate import GenerationError, demos_from_pool, merge_stats, plan_shards, rationale_stats
from tinyllm_ray.prompts import sample_demos

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


def demo_pool(n: int) -> pa.Table:
    rows = [{"id": f"t{i}", "question": f"question {i}?", "choices": ["x", "y"], "answer_index": i % 2}
            for i in range(n)]
    return pa.Table.from_batches(pa.Table.from_pylist(rows).to_batches(max_chunksize=7))  # chunked like row groups


def test_actor_demos_from_the_arrow_pool_are_the_demos_sample_demos_picks():
    pool = demo_pool(50)
    rows = pool.to_pylist()
    shard = rows[20:36]  # a train shard at offset 20, spanning several chunks
    assert demos_from_pool(pool, shard, 20, 3, seed=4) == [sample_demos(rows, p["id"], 3, 4) for p in shard]
    eval_problems = [{"id": "e1"}, {"id": "e2"}]  # another split: the whole pool is eligible
    assert demos_from_pool(pool, eval_problems, None, 2, seed=0) == [sample_demos(rows, p["id"], 2, 0)
                                                                    for p in eval_problems]


def test_actor_demos_refuse_a_shard_that_is_not_where_the_pool_has_it():
    pool = demo_pool(10)
    with pytest.raises(GenerationError, match="not at row 3 of the demo pool"):
        demos_from_pool(pool, pool.to_pylist()[2:5], 3, 2, seed=0)
