"""The training table: its tasks, the join of problems with teachers' rationales, the sequences of a row, and the
micro-batches of a pull (tokenisation and collation: test_training_tokens.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tinyllm_ray import prompts
from tinyllm_ray.schemas import PROBLEM_SCHEMA, RATIONALE_SCHEMA, training_schema
from tinyllm_ray.training_data import build_training_table, micro_batches, task_pairs, tasks_for, usable_rationale

PROBLEMS = [
    {"id": "p1", "dataset": "demo", "split": "train", "question": "What melts ice?",
     "choices": ["heat", "cold"], "answer_index": 0, "answer": "heat", "context": None},
    {"id": "p2", "dataset": "demo", "split": "train", "question": "What do fish breathe with?",
     "choices": ["lungs", "gills"], "answer_index": 1, "answer": "gills", "context": "Fish live in water."},
    {"id": "p3", "dataset": "demo", "split": "train", "question": "Which gas do plants absorb?",
     "choices": ["oxygen", "carbon dioxide"], "answer_index": 1, "answer": "carbon dioxide", "context": None},
]

def rationale_rows(teacher: str, rows: list[tuple[str, str, str | None]]) -> pa.Table:
    records = [{
        "id": pid, "dataset": "demo", "teacher": teacher, "model": "m", "prompt": "p", "rationale": text,
        "num_prompt_tokens": 1, "num_generated_tokens": 1, "finish_reason": "stop", "sampling_params": "{}",
        "error": error,
    } for pid, text, error in rows]
    return pa.Table.from_pylist(records, schema=RATIONALE_SCHEMA)


TASKS = tasks_for("predict: ", 1.0, [("a", "explain: ", 0.5), ("b", "rationale: ", 2.0)])


# ---------------------------------------------------------------- tasks and the training table

def test_tasks_for():
    assert [(t.name, t.prefix, t.column, t.weight) for t in TASKS] == [
        ("answer", "predict: ", "answer", 1.0),
        ("a", "explain: ", "rationale__a", 0.5),
        ("b", "rationale: ", "rationale__b", 2.0),
    ]


def test_usable_rationale():
    assert usable_rationale({"rationale": "ok", "error": None})
    assert not usable_rationale({"rationale": "ok", "error": "boom"})
    assert not usable_rationale({"rationale": "  \n", "error": None})
    assert not usable_rationale({"rationale": None, "error": None})


def test_build_training_table_joins_by_id():
    problems = pa.Table.from_pylist(PROBLEMS, schema=PROBLEM_SCHEMA)
    rationales = {
        # out of order on purpose: the join is by id, not position
        "a": rationale_rows("a", [("p3", " plants use it \n", None), ("p2", "partial", "engine error"),
                                  ("p1", "   ", None)]),
        "b": rationale_rows("b", [("p2", "gills take oxygen", None), ("p1", "heat is warm", None)]),
    }
    table, usable = build_training_table(problems, rationales)
    assert table.schema == training_schema(["a", "b"])
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["p1", "p2", "p3"]
    assert [r["answer"] for r in rows] == ["heat", "gills", "carbon dioxide"]
    assert rows[1]["input"] == prompts.student_input(PROBLEMS[1])
    assert rows[1]["input"].startswith("Fish live in water.\nWhat do fish breathe with?\nAnswer Choices:\n(a) lungs")
    assert [r["rationale__a"] for r in rows] == [None, None, "plants use it"]  # empty, errored, stripped
    assert [r["rationale__b"] for r in rows] == ["heat is warm", "gills take oxygen", None]  # missing row
    assert {name: c["usable"] for name, c in usable.items()} == {"a": 1, "b": 2}


def test_build_training_table_no_teachers():
    problems = pa.Table.from_pylist(PROBLEMS, schema=PROBLEM_SCHEMA)
    table, usable = build_training_table(problems, {})
    assert table.column_names == ["id", "input", "answer"] and table.num_rows == 3 and usable == {}


def test_usable_counts_only_joined_rationales():
    problems = pa.Table.from_pylist(PROBLEMS[:1], schema=PROBLEM_SCHEMA)
    rationales = {"a": rationale_rows("a", [("p1", "x", None), ("p2", "y", None), ("p3", "z", None)])}
    table, usable = build_training_table(problems, rationales)
    assert {name: c["usable"] for name, c in usable.items()} == {"a": table.column("rationale__a").length() - table.column("rationale__a").null_count} == {"a": 1}


def test_build_training_table_counts_add_up_and_are_json():
    import json

    problems = pa.Table.from_pylist(PROBLEMS, schema=PROBLEM_SCHEMA)
    rationales = {"a": rationale_rows("a", [("p3", " plants use it \n", None), ("p2", "partial", "engine error"),
                                            ("p1", "   ", None)])}
    _, counts = build_training_table(problems, rationales)
    assert counts == {"a": {"usable": 1, "missing": 0, "failed": 1, "dropped_empty": 1, "dropped_short": 0,
                            "dropped_degenerate": 0, "dropped_truncated": 0, "dropped_contradicting": 0}}
    assert json.loads(json.dumps(counts)) == counts  # train.py writes it into the student manifest
    _, counts = build_training_table(pa.Table.from_pylist(PROBLEMS, schema=PROBLEM_SCHEMA),
                                     {"b": rationale_rows("b", [("p1", "heat is warm", None)])})
    assert counts["b"]["usable"] == 1 and counts["b"]["missing"] == 2 and sum(counts["b"].values()) == 3


def test_build_training_table_reads_only_its_columns_and_batches_problems(monkeypatch):
    """train() loads only RATIONALE_COLUMNS (not the prompts) and builds in batches of problems: same table."""
    from tinyllm_ray import training_data
    from tinyllm_ray.config import RationaleFilter

    problems = pa.Table.from_pylist(PROBLEMS, schema=PROBLEM_SCHEMA)
    full = {"a": filtered_rows("a"), "b": rationale_rows("b", [("p2", "gills take oxygen", None), ("p1", " ", None)])}
    drop_truncated = RationaleFilter(drop_truncated=True, drop_contradicting=False)
    expected = build_training_table(problems, full, drop_truncated)
    narrow = {name: table.select(list(training_data.RATIONALE_COLUMNS)) for name, table in full.items()}
    monkeypatch.setattr(training_data, "BUILD_BATCH", 2)  # 3 problems: two batches
    table, counts = build_training_table(problems, narrow, drop_truncated)
    assert table.equals(expected[0]) and counts == expected[1]
    assert table.column("rationale__a").null_count == 2 and counts["a"]["dropped_truncated"] == 2  # finish_reason read


def test_repeated_id_keeps_its_last_usable_row_else_its_last_row():
    """Written shards hold each id once; hand-merged files may not. Problems and rationales in several chunks."""
    problems = pa.concat_tables([pa.Table.from_pylist(PROBLEMS[:1], schema=PROBLEM_SCHEMA),
                                 pa.Table.from_pylist(PROBLEMS[1:], schema=PROBLEM_SCHEMA)])
    rationales = pa.concat_tables([
        rationale_rows("a", [("p1", "first good", None), ("p2", "", None), ("p1", "failed", "boom")]),
        rationale_rows("a", [("p1", "second good", None), ("p1", " ", None), ("p2", "late failure", "boom")]),
    ])
    table, counts = build_training_table(problems, {"a": rationales})
    assert table.column("rationale__a").to_pylist() == ["second good", None, None]
    assert counts["a"]["usable"] == 1 and counts["a"]["failed"] == 1 and counts["a"]["missing"] == 1
    empty, counts = build_training_table(problems, {"a": rationale_rows("a", [])})
    assert empty.column("rationale__a").null_count == 3 and counts["a"]["missing"] == 3


def filtered_rows(teacher: str) -> pa.Table:
    """p1 contradicts (names (b), gold is (a)); p2 is truncated and degenerate; p3 is short but fine."""
    loop = "gills take oxygen from water. " * 6
    records = [
        {"id": "p1", "rationale": "Cold makes ice. Thus, the answer is (b) cold", "finish_reason": "stop"},
        {"id": "p2", "rationale": loop + "gills take", "finish_reason": "length"},
        {"id": "p3", "rationale": "plants use it", "finish_reason": "length"},
    ]
    return pa.Table.from_pylist([{
        "dataset": "demo", "teacher": teacher, "model": "m", "prompt": "p", "num_prompt_tokens": 1,
        "num_generated_tokens": 1, "sampling_params": "{}", "error": None, **r} for r in records],
        schema=RATIONALE_SCHEMA)


def test_build_training_table_without_filter_keeps_flagged_rationales():
    problems = pa.Table.from_pylist(PROBLEMS, schema=PROBLEM_SCHEMA)
    table, counts = build_training_table(problems, {"a": filtered_rows("a")})
    assert table.column("rationale__a").null_count == 0 and counts["a"]["usable"] == 3


def test_build_training_table_default_filter_drops_contradicting_only():
    from tinyllm_ray.config import RationaleFilter

    problems = pa.Table.from_pylist(PROBLEMS, schema=PROBLEM_SCHEMA)
    table, counts = build_training_table(problems, {"a": filtered_rows("a")}, RationaleFilter())
    rows = table.to_pylist()
    assert [r["rationale__a"] is None for r in rows] == [True, False, False]
    assert [r["answer"] for r in rows] == ["heat", "gills", "carbon dioxide"]  # the answer task stays
    assert counts["a"]["usable"] == 2 and counts["a"]["dropped_contradicting"] == 1


@pytest.mark.parametrize("settings, kept, dropped", [
    ({"drop_contradicting": False}, [True, True, True], {}),
    ({"drop_degenerate": True}, [False, False, True], {"dropped_contradicting": 1, "dropped_degenerate": 1}),
    ({"drop_truncated": True, "drop_contradicting": False}, [True, False, False], {"dropped_truncated": 2}),
    # p2 is both degenerate and truncated: counted once, under the first reason (degenerate)
    ({"drop_truncated": True, "drop_degenerate": True}, [False, False, False],
     {"dropped_contradicting": 1, "dropped_degenerate": 1, "dropped_truncated": 1}),
    ({"min_words": 4, "drop_contradicting": False}, [True, True, False], {"dropped_short": 1}),
])
def test_build_training_table_filter_settings(settings, kept, dropped):
    from tinyllm_ray.config import RationaleFilter

    problems = pa.Table.from_pylist(PROBLEMS, schema=PROBLEM_SCHEMA)
    table, counts = build_training_table(problems, {"a": filtered_rows("a")}, RationaleFilter(**settings))
    assert [r["rationale__a"] is not None for r in table.to_pylist()] == kept
    assert {k: v for k, v in counts["a"].items() if k.startswith("dropped_") and v} == dropped
    assert counts["a"]["usable"] == sum(kept) and sum(counts["a"].values()) == 3


def test_filter_never_keeps_empty_or_failed_rationales():
    from tinyllm_ray.config import RationaleFilter

    problems = pa.Table.from_pylist(PROBLEMS[:2], schema=PROBLEM_SCHEMA)
    rationales = {"a": rationale_rows("a", [("p1", " \n ", None), ("p2", "gills", "engine error")])}
    keep_all = RationaleFilter(drop_empty=False, drop_contradicting=False)
    table, counts = build_training_table(problems, rationales, keep_all)
    assert table.column("rationale__a").null_count == 2
    assert counts["a"]["dropped_empty"] == 1 and counts["a"]["failed"] == 1 and counts["a"]["usable"] == 0


# ---------------------------------------------------------------- the sequences of a row

def test_task_pairs_skip_missing_and_blank_targets():
    rows = [
        {"id": "p1", "input": "What melts ice ?", "answer": "heat", "rationale__a": "heat is warm",
         "rationale__b": None},
        {"id": "p2", "input": "What do fish breathe with ?", "answer": "gills",
         "rationale__a": "gills take oxygen from water", "rationale__b": "  "},
    ]
    batch = {key: [r[key] for r in rows] for key in rows[0]}
    assert task_pairs(batch, TASKS) == [
        [(0, "predict: What melts ice ?\n", "heat"), (1, "explain: What melts ice ?\n", "heat is warm")],
        [(0, "predict: What do fish breathe with ?\n", "gills"),
         (1, "explain: What do fish breathe with ?\n", "gills take oxygen from water")],
    ]


def test_take_fraction_is_seeded_nested_and_keeps_order():
    from tinyllm_ray.training_data import take_fraction

    table = pa.Table.from_pylist([dict(PROBLEMS[0], id=f"p{i:02d}") for i in range(20)], schema=PROBLEM_SCHEMA)
    assert take_fraction(table, 1.0, seed=0) is table
    half = take_fraction(table, 0.5, seed=0).column("id").to_pylist()
    quarter = take_fraction(table, 0.25, seed=0).column("id").to_pylist()
    assert len(half) == 10 and len(quarter) == 5
    assert set(quarter) <= set(half) and half == sorted(half)
    assert take_fraction(table, 0.5, seed=0).column("id").to_pylist() == half  # same seed, same subset
    assert take_fraction(table, 0.5, seed=1).column("id").to_pylist() != half
    assert take_fraction(table, 0.001, seed=0).num_rows == 1  # never empty


@pytest.mark.parametrize("rows,size,per_pull", [(0, 2, 8), (7, 2, 8), (16, 2, 8), (17, 2, 8), (33, 4, 8), (5, 1, 3),
                                                (9, 3, 1)])
def test_micro_batches_match_pulling_one_micro_batch_at_a_time(rows, size, per_pull):
    """What train() pulls (``size * per_pull`` rows at a time, last pull partial) splits into exactly the micro-batches
    ``iter_batches(batch_size=size, drop_last=True)`` would have handed out, in order."""
    ids, texts = list(range(rows)), [f"t{i}" for i in range(rows)]
    step = size * per_pull
    pulls = [{"id": ids[i:i + step], "text": texts[i:i + step]} for i in range(0, rows, step)]
    expected = [{"id": ids[i:i + size], "text": texts[i:i + size]} for i in range(0, rows - size + 1, size)]
    assert list(micro_batches(pulls, size)) == expected
