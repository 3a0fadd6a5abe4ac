"""Training table join and the multi-task collator, with a tiny word-level tokenizer built in memory."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tinyllm_ray import prompts
from tinyllm_ray.losses import IGNORE_INDEX
from tinyllm_ray.schemas import PROBLEM_SCHEMA, RATIONALE_SCHEMA, training_schema
from tinyllm_ray.training_data import Collator, build_training_table, micro_batches, tasks_for, usable_rationale

PROBLEMS = [
    {"id": "p1", "dataset": "demo", "split": "train", "question": "What melts ice?",
     "choices": ["heat", "cold"], "answer_index": 0, "answer": "heat", "context": None},
    {"id": "p2", "dataset": "demo", "split": "train", "question": "What do fish breathe with?",
     "choices": ["lungs", "gills"], "answer_index": 1, "answer": "gills", "context": "Fish live in water."},
    {"id": "p3", "dataset": "demo", "split": "train", "question": "Which gas do plants absorb?",
     "choices": ["oxygen", "carbon dioxide"], "answer_index": 1, "answer": "carbon dioxide", "context": None},
]

CORPUS = [
    "predict : explain : rationale : Answer Choices ( a ) ( b ) ( c ) ( d )",
    "What melts ice ? heat cold What do fish breathe with ? lungs gills Fish live in water .",
    "Which gas do plants absorb ? oxygen carbon dioxide because heat is warm and gills take oxygen from water",
    " ".join(f"w{i}" for i in range(200)),
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


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


# ---------------------------------------------------------------- collation

def batch_of(rows: list[dict]) -> dict[str, list]:
    return {key: [r.get(key) for r in rows] for key in rows[0]}


ROWS = [
    {"id": "p1", "input": "What melts ice ?", "answer": "heat", "rationale__a": "heat is warm", "rationale__b": None},
    {"id": "p2", "input": "What do fish breathe with ?", "answer": "gills",
     "rationale__a": "gills take oxygen from water", "rationale__b": "  "},
]


def test_pairs_skip_missing_rationales(tokenizer):
    collator = Collator(tokenizer, TASKS, seq2seq=False, max_input_tokens=64, max_target_tokens=16)
    pairs = collator.pairs(batch_of(ROWS))
    assert pairs == [
        (0, "predict: What melts ice ?\n", "heat"),
        (1, "explain: What melts ice ?\n", "heat is warm"),
        (0, "predict: What do fish breathe with ?\n", "gills"),
        (1, "explain: What do fish breathe with ?\n", "gills take oxygen from water"),
    ]


def test_pairs_tolerate_absent_columns(tokenizer):
    collator = Collator(tokenizer, TASKS, seq2seq=False, max_input_tokens=64, max_target_tokens=16)
    batch = {"input": ["What melts ice ?"], "answer": ["heat"]}
    assert [task for task, _, _ in collator.pairs(batch)] == [0]


def test_decoder_only_collation(tokenizer):
    collator = Collator(tokenizer, TASKS, seq2seq=False, max_input_tokens=64, max_target_tokens=16)
    out = collator(batch_of(ROWS))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert set(out) == {"input_ids", "attention_mask", "labels", "task_ids"}
    assert out["task_ids"].tolist() == [0, 1, 0, 1]
    assert all(v.dtype == torch.long for v in out.values())
    assert out["input_ids"].shape == out["labels"].shape == out["attention_mask"].shape
    assert out["input_ids"].shape[0] == 4
    pairs = collator.pairs(batch_of(ROWS))
    width = out["input_ids"].shape[1]
    for row, (_, prompt, target) in enumerate(pairs):
        p, t = ids(tokenizer, prompt), ids(tokenizer, target) + [eos]
        n = len(p) + len(t)
        assert tokenizer.unk_token_id not in p + t  # the fixture vocabulary covers the texts
        assert out["input_ids"][row].tolist() == p + t + [pad] * (width - n)
        assert out["labels"][row].tolist() == [IGNORE_INDEX] * len(p) + t + [IGNORE_INDEX] * (width - n)
        assert out["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
    assert width == max(len(ids(tokenizer, p)) + len(ids(tokenizer, t)) + 1 for _, p, t in pairs)


def test_seq2seq_collation(tokenizer):
    collator = Collator(tokenizer, TASKS, seq2seq=True, max_input_tokens=64, max_target_tokens=16)
    out = collator(batch_of(ROWS))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pairs = collator.pairs(batch_of(ROWS))
    assert out["task_ids"].tolist() == [0, 1, 0, 1]
    in_width, label_width = out["input_ids"].shape[1], out["labels"].shape[1]
    assert in_width == max(len(ids(tokenizer, p)) for _, p, _ in pairs)
    assert label_width == max(len(ids(tokenizer, t)) + 1 for _, _, t in pairs)
    for row, (_, prompt, target) in enumerate(pairs):
        p, t = ids(tokenizer, prompt), ids(tokenizer, target) + [eos]
        assert out["input_ids"][row].tolist() == p + [pad] * (in_width - len(p))
        assert out["attention_mask"][row].tolist() == [1] * len(p) + [0] * (in_width - len(p))
        assert out["labels"][row].tolist() == t + [IGNORE_INDEX] * (label_width - len(t))


WORDS = [f"w{i}" for i in range(200)]


@pytest.mark.parametrize("seq2seq", [True, False])
def test_truncation_keeps_prefix_end_of_input_and_start_of_target(tokenizer, seq2seq):
    long_input = " ".join(WORDS[:100])
    long_target = " ".join(WORDS[100:200])
    tasks = tasks_for("predict: ", 1.0, [])
    collator = Collator(tokenizer, tasks, seq2seq=seq2seq, max_input_tokens=20, max_target_tokens=8)
    out = collator({"input": [long_input], "answer": [long_target]})
    eos = tokenizer.eos_token_id
    prefix_ids = ids(tokenizer, "predict: ")
    rest_ids = ids(tokenizer, prompts.student_prompt("", long_input))
    target_ids = ids(tokenizer, long_target)
    kept_input = prefix_ids + rest_ids[-(20 - len(prefix_ids)):]
    kept_target = target_ids[:7] + [eos]
    assert kept_input[-1] == tokenizer.convert_tokens_to_ids("w99")
    assert kept_target[0] == tokenizer.convert_tokens_to_ids("w100")
    if seq2seq:
        assert out["input_ids"][0].tolist() == kept_input
        assert out["labels"][0].tolist() == kept_target
    else:
        assert out["input_ids"][0].tolist() == kept_input + kept_target
        assert out["labels"][0].tolist() == [IGNORE_INDEX] * 20 + kept_target
    assert out["input_ids"].shape[1] == (20 if seq2seq else 28)


def test_truncation_keeps_task_prefix(tokenizer):
    long_input = " ".join(WORDS[:100])
    collator = Collator(tokenizer, TASKS, seq2seq=True, max_input_tokens=20, max_target_tokens=8)
    out = collator({"input": [long_input], "answer": ["heat"], "rationale__a": ["heat is warm"]})
    answer_row, rationale_row = out["input_ids"].tolist()
    assert answer_row[: len(ids(tokenizer, "predict: "))] == ids(tokenizer, "predict: ")
    assert rationale_row[: len(ids(tokenizer, "explain: "))] == ids(tokenizer, "explain: ")
    assert answer_row != rationale_row


def test_collator_sets_pad_from_eos_when_missing(tokenizer):
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>", unk_token="<unk>")
    assert tok.pad_token_id is None
    collator = Collator(tok, tasks_for("predict: ", 1.0, []), seq2seq=False, max_input_tokens=64, max_target_tokens=8)
    assert tok.pad_token_id == tok.eos_token_id
    out = collator({"input": ["What melts ice ?", "What do fish breathe with ?"], "answer": ["heat", "gills"]})
    assert out["input_ids"].shape[0] == 2


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


# ---------------------------------------------------------------- length groups

@pytest.mark.parametrize("seq2seq", [False, True])
def test_length_groups_partition_and_never_pad_more(seq2seq):
    import random

    from tinyllm_ray.training_data import length_groups, padded_tokens

    rng = random.Random(0)
    for _ in range(50):
        lengths = [(rng.randint(1, 40), rng.randint(1, 30)) for _ in range(rng.randint(1, 14))]
        previous = None
        for groups in (1, 2, 3):
            split = length_groups(lengths, seq2seq, groups)
            assert sorted(i for g in split for i in g) == list(range(len(lengths)))  # a partition
            assert 1 <= len(split) <= groups and all(split)
            padded = sum(padded_tokens([lengths[i] for i in g], seq2seq) for g in split)
            assert padded >= sum(s + t for s, t in lengths)
            assert previous is None or padded <= previous  # more groups never pad more
            previous = padded
        assert length_groups(lengths, seq2seq, 1) == [sorted(range(len(lengths)),
                                                             key=lambda i: (sum(lengths[i]), i))]


def test_length_groups_separate_answers_from_rationales():
    from tinyllm_ray.training_data import length_groups

    lengths = [(100, 5), (100, 60), (120, 5), (120, 64), (90, 3), (90, 50)]
    assert length_groups(lengths, False, 2) == [[4, 0, 2], [5, 1, 3]]
    assert length_groups([], False, 2) == []
    assert length_groups([(10, 10)] * 3, False, 3) == [[0, 1, 2]]  # equal lengths: one group is as cheap


@pytest.mark.parametrize("seq2seq", [False, True])
def test_grouped_batches_hold_the_same_sequences_with_less_padding(tokenizer, seq2seq):
    rows = ROWS + [{"id": "p3", "input": " ".join(f"w{i}" for i in range(30)), "answer": "oxygen",
                    "rationale__a": " ".join(f"w{i}" for i in range(40, 55)), "rationale__b": "heat is warm"}]
    collator = Collator(tokenizer, TASKS, seq2seq=seq2seq, max_input_tokens=64, max_target_tokens=16)
    whole = collator(batch_of(rows))
    groups = collator.grouped(batch_of(rows), max_groups=2)
    assert len(groups) == 2

    def sequences(features):
        out = []
        for row in range(features["input_ids"].shape[0]):
            mask = features["attention_mask"][row].bool()
            labels = features["labels"][row]
            out.append((int(features["task_ids"][row]), features["input_ids"][row][mask].tolist(),
                        labels[labels != IGNORE_INDEX].tolist()))
        return sorted(out)

    assert sorted(s for g in groups for s in sequences(g)) == sequences(whole)
    padded = sum(g["input_ids"].numel() + (g["labels"].numel() if seq2seq else 0) for g in groups)
    assert padded < whole["input_ids"].numel() + (whole["labels"].numel() if seq2seq else 0)


def test_grouped_loss_equals_one_batch_loss(tokenizer):
    from tinyllm_ray.losses import multi_task_loss, per_sequence_loss

    torch.manual_seed(0)
    embedding = torch.nn.Embedding(len(tokenizer), 8)
    head = torch.nn.Linear(8, len(tokenizer))
    collator = Collator(tokenizer, TASKS, seq2seq=False, max_input_tokens=64, max_target_tokens=16)
    weights = torch.tensor([t.weight for t in TASKS])

    def loss_of(groups):
        losses = [per_sequence_loss(head(embedding(g["input_ids"])), g["labels"], shift=True) for g in groups]
        return multi_task_loss(torch.cat(losses), torch.cat([g["task_ids"] for g in groups]), weights)[0]

    one = loss_of([collator(batch_of(ROWS))])
    grouped = loss_of(collator.grouped(batch_of(ROWS), max_groups=3))
    assert torch.allclose(one, grouped, atol=1e-6)


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
