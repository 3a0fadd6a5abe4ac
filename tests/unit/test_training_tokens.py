"""Tokenising the training table (what the training set's join tasks write) and collating its token rows (what the
Train worker does), with tokenizers built in memory: a word-level one for readable expectations and a byte-level BPE
one for the golden tensors of the collator that tokenised in the worker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tinyllm_ray import prompts
from tinyllm_ray.losses import IGNORE_INDEX
from tinyllm_ray.schemas import training_schema, training_token_schema
from tinyllm_ray.training_data import tasks_for
from tinyllm_ray.training_tokens import Collator, Tokenisation, length_groups, padded_tokens, tokenise_table, \
    with_pad_token

GOLDEN = Path(__file__).parent / "data" / "collation_before_tokenised_stream.json"

CORPUS = [
    "predict : explain : rationale : Answer Choices ( a ) ( b ) ( c ) ( d )",
    "What melts ice ? heat cold What do fish breathe with ? lungs gills Fish live in water .",
    "Which gas do plants absorb ? oxygen carbon dioxide because heat is warm and gills take oxygen from water",
    " ".join(f"w{i}" for i in range(200)),
]
TASKS = tasks_for("predict: ", 1.0, [("a", "explain: ", 0.5), ("b", "rationale: ", 2.0)])
WORDS = [f"w{i}" for i in range(200)]
ROWS = [
    {"id": "p1", "input": "What melts ice ?", "answer": "heat", "rationale__a": "heat is warm", "rationale__b": None},
    {"id": "p2", "input": "What do fish breathe with ?", "answer": "gills",
     "rationale__a": "gills take oxygen from water", "rationale__b": "  "},
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def bpe_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (as the students' are: merges across a prefix's boundary matter)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def token_rows(tokenizer, rows: list[dict], tasks=TASKS, max_input_tokens: int = 64,
               max_target_tokens: int = 16) -> dict[str, list]:
    """``rows`` (training-schema rows) tokenised as the training set's join tasks tokenise them, as columns."""
    teachers = [t.name for t in tasks[1:]]
    table = pa.Table.from_pylist([{k: r.get(k) for k in training_schema(teachers).names} for r in rows],
                                 schema=training_schema(teachers))
    tokens = tokenise_table(table, tokenizer, Tokenisation("unused", tuple(tasks), max_input_tokens, max_target_tokens))
    assert tokens.schema == training_token_schema([t.column for t in tasks])
    return tokens.to_pydict()


def collator(tokenizer, seq2seq: bool, tasks=TASKS) -> Collator:
    return Collator(tasks, seq2seq, tokenizer.pad_token_id)


# ---------------------------------------------------------------- the collator that tokenised in the worker

@pytest.mark.parametrize("case", range(8), ids=lambda i: f"case{i}")
def test_same_tensors_as_the_collator_that_tokenised_in_the_worker(case):
    """Golden tensors of ``training_data.Collator.grouped`` at 684a52e (text rows tokenised in the Train worker):
    decoder-only and seq2seq, truncated prompts and targets and not, 1 and 2 length groups, missing and blank
    rationales. Tokenising in the join task and padding in the worker gives exactly them."""
    golden = json.loads(GOLDEN.read_text())
    expected = golden["cases"][case]
    tokenizer = bpe_tokenizer(golden["corpus"])
    rows = token_rows(tokenizer, golden["rows"], TASKS, expected["max_input_tokens"], expected["max_target_tokens"])
    got = collator(tokenizer, expected["seq2seq"]).grouped(rows, expected["length_groups"])
    assert [{k: v.tolist() for k, v in group.items()} for group in got] == expected["batches"]
    assert all(v.dtype == torch.long for group in got for v in group.values())


def test_numpy_batches_as_ray_hands_them_collate_like_lists(tokenizer):
    """``iter_batches(batch_format="numpy")`` hands list columns as object arrays of int32 arrays (None: no target)."""
    rows = token_rows(tokenizer, ROWS)
    as_numpy = {}
    for key, column in rows.items():
        array = np.empty(len(column), dtype=object)
        array[:] = [None if v is None else np.asarray(v, np.int32) for v in column] if key != "id" else column
        as_numpy[key] = array
    for seq2seq in (False, True):
        lists, arrays = (collator(tokenizer, seq2seq).grouped(b, 2) for b in (rows, as_numpy))
        assert [{k: v.tolist() for k, v in g.items()} for g in lists] == [{k: v.tolist() for k, v in g.items()}
                                                                          for g in arrays]


# ---------------------------------------------------------------- tokenisation and collation

def test_token_rows_hold_each_task_with_a_target(tokenizer):
    rows = token_rows(tokenizer, ROWS)
    eos = tokenizer.eos_token_id
    assert rows["id"] == ["p1", "p2"]
    assert rows["prompt_ids__answer"][0] == ids(tokenizer, "predict: What melts ice ?\n")
    assert rows["target_ids__rationale__a"][1] == ids(tokenizer, "gills take oxygen from water") + [eos]
    assert rows["prompt_ids__rationale__b"] == rows["target_ids__rationale__b"] == [None, None]  # missing, blank


def test_decoder_only_collation(tokenizer):
    out = collator(tokenizer, False)(token_rows(tokenizer, ROWS))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert set(out) == {"input_ids", "attention_mask", "labels", "task_ids"}
    assert out["task_ids"].tolist() == [0, 1, 0, 1]
    assert all(v.dtype == torch.long for v in out.values())
    assert out["input_ids"].shape == out["labels"].shape == out["attention_mask"].shape
    pairs = [("predict: ", r["input"], r["answer"]) for r in ROWS[:1]] + [("explain: ", ROWS[0]["input"],
                                                                             ROWS[0]["rationale__a"])]
    pairs += [("predict: ", ROWS[1]["input"], ROWS[1]["answer"]), ("explain: ", ROWS[1]["input"],
                                                                   ROWS[1]["rationale__a"])]
    width = out["input_ids"].shape[1]
    for row, (prefix, text, target) in enumerate(pairs):
        p, t = ids(tokenizer, prompts.student_prompt(prefix, text)), ids(tokenizer, target) + [eos]
        n = len(p) + len(t)
        assert tokenizer.unk_token_id not in p + t  # the fixture vocabulary covers the texts
        assert out["input_ids"][row].tolist() == p + t + [pad] * (width - n)
        assert out["labels"][row].tolist() == [IGNORE_INDEX] * len(p) + t + [IGNORE_INDEX] * (width - n)
        assert out["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)


def test_seq2seq_collation(tokenizer):
    rows = token_rows(tokenizer, ROWS)
    out = collator(tokenizer, True)(rows)
    pad = tokenizer.pad_token_id
    assert out["task_ids"].tolist() == [0, 1, 0, 1]
    sources = [rows["prompt_ids__answer"][0], rows["prompt_ids__rationale__a"][0], rows["prompt_ids__answer"][1],
               rows["prompt_ids__rationale__a"][1]]
    targets = [rows["target_ids__answer"][0], rows["target_ids__rationale__a"][0], rows["target_ids__answer"][1],
               rows["target_ids__rationale__a"][1]]
    in_width, label_width = out["input_ids"].shape[1], out["labels"].shape[1]
    assert in_width == max(map(len, sources)) and label_width == max(map(len, targets))
    for row, (p, t) in enumerate(zip(sources, targets)):
        assert out["input_ids"][row].tolist() == p + [pad] * (in_width - len(p))
        assert out["attention_mask"][row].tolist() == [1] * len(p) + [0] * (in_width - len(p))
        assert out["labels"][row].tolist() == t + [IGNORE_INDEX] * (label_width - len(t))


@pytest.mark.parametrize("seq2seq", [True, False])
def test_truncation_keeps_prefix_end_of_input_and_start_of_target(tokenizer, seq2seq):
    long_input, long_target = " ".join(WORDS[:100]), " ".join(WORDS[100:200])
    tasks = tasks_for("predict: ", 1.0, [])
    rows = token_rows(tokenizer, [{"id": "p", "input": long_input, "answer": long_target}], tasks, 20, 8)
    out = collator(tokenizer, seq2seq, tasks)(rows)
    prefix_ids = ids(tokenizer, "predict: ")
    rest_ids = ids(tokenizer, prompts.student_prompt("", long_input))
    kept_input = prefix_ids + rest_ids[-(20 - len(prefix_ids)):]
    kept_target = ids(tokenizer, long_target)[:7] + [tokenizer.eos_token_id]
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
    rows = token_rows(tokenizer, [{"id": "p", "input": " ".join(WORDS[:100]), "answer": "heat",
                                   "rationale__a": "heat is warm"}], max_input_tokens=20, max_target_tokens=8)
    answer_row, rationale_row = collator(tokenizer, True)(rows)["input_ids"].tolist()
    assert answer_row[: len(ids(tokenizer, "predict: "))] == ids(tokenizer, "predict: ")
    assert rationale_row[: len(ids(tokenizer, "explain: "))] == ids(tokenizer, "explain: ")
    assert answer_row != rationale_row


def test_pad_token_from_eos_when_missing(tokenizer):
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="</s>", unk_token="<unk>")
    assert tok.pad_token_id is None
    assert with_pad_token(tok) is tok and tok.pad_token_id == tok.eos_token_id
    tasks = tasks_for("predict: ", 1.0, [])
    rows = token_rows(tok, [{"id": "p1", "input": "What melts ice ?", "answer": "heat"},
                            {"id": "p2", "input": "What do fish breathe with ?", "answer": "gills"}], tasks)
    out = collator(tok, False, tasks)(rows)
    assert out["input_ids"].shape[0] == 2 and out["input_ids"][0, -1] == tok.eos_token_id  # padded with eos


def test_tokenises_in_batches(tokenizer, monkeypatch):
    from tinyllm_ray import training_tokens

    rows = [dict(ROWS[i % 2], id=f"p{i}") for i in range(5)]
    whole = token_rows(tokenizer, rows)
    monkeypatch.setattr(training_tokens, "TOKENISE_BATCH", 2)
    assert token_rows(tokenizer, rows) == whole


# ---------------------------------------------------------------- length groups

@pytest.mark.parametrize("seq2seq", [False, True])
def test_length_groups_partition_and_never_pad_more(seq2seq):
    import random

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
    lengths = [(100, 5), (100, 60), (120, 5), (120, 64), (90, 3), (90, 50)]
    assert length_groups(lengths, False, 2) == [[4, 0, 2], [5, 1, 3]]
    assert length_groups([], False, 2) == []
    assert length_groups([(10, 10)] * 3, False, 3) == [[0, 1, 2]]  # equal lengths: one group is as cheap


@pytest.mark.parametrize("seq2seq", [False, True])
def test_grouped_batches_hold_the_same_sequences_with_less_padding(tokenizer, seq2seq):
    rows = token_rows(tokenizer, ROWS + [{"id": "p3", "input": " ".join(WORDS[:30]), "answer": "oxygen",
                                          "rationale__a": " ".join(WORDS[40:55]), "rationale__b": "heat is warm"}])
    collate = collator(tokenizer, seq2seq)
    whole = collate(rows)
    groups = collate.grouped(rows, max_groups=2)
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
    collate, rows = collator(tokenizer, False), token_rows(tokenizer, ROWS)
    weights = torch.tensor([t.weight for t in TASKS])

    def loss_of(groups):
        losses = [per_sequence_loss(head(embedding(g["input_ids"])), g["labels"], shift=True) for g in groups]
        return multi_task_loss(torch.cat(losses), torch.cat([g["task_ids"] for g in groups]), weights)[0]

    assert torch.allclose(loss_of([collate(rows)]), loss_of(collate.grouped(rows, max_groups=3)), atol=1e-6)
