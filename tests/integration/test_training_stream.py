"""The training set built in Ray Data tasks on a real local cluster: the same rows and per-teacher counts as the
whole-split join (``build_training_table``) tokenised in one process (``tokenise_table``, the tiny student's
tokenizer), in the same order every build, streamed in that order; the numpy batches the Train workers pull collate
to the same tensors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinyllm_ray.config import RationaleFilter
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.schemas import PROBLEM_SCHEMA, RATIONALE_SCHEMA, ArtifactError, write_manifest
from tinyllm_ray.train import load_rationales
from tinyllm_ray.training_data import build_training_table, take_fraction, tasks_for
from tinyllm_ray.training_stream import build_training_set, training_dataset
from tinyllm_ray.training_stream_plan import order_keys
from tinyllm_ray.training_tokens import Collator, Tokenisation, tokenise_table

PROBLEMS = 40


def _problem(i: int) -> dict:
    return {"id": f"p{i:03d}", "dataset": "demo", "split": "train", "question": f"Which one is {i}?",
            "choices": [f"x{i}", f"y{i}", f"z{i}"], "answer_index": i % 3, "answer": [f"x{i}", f"y{i}", f"z{i}"][i % 3],
            "context": "Some context." if i % 4 == 0 else None}


def _rationale(teacher: str, i: int, text: str, error: str | None = None, finish: str = "stop") -> dict:
    return {"id": f"p{i:03d}", "dataset": "demo", "teacher": teacher, "model": "m", "prompt": "p", "rationale": text,
            "num_prompt_tokens": 1, "num_generated_tokens": 1, "finish_reason": finish, "sampling_params": "{}",
            "error": error}


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> RunLayout:
    """40 problems in row groups of 3; teacher a in 3 shards with failed, blank, truncated, contradicting,
    missing and repeated ids; teacher b in one file of a few row groups."""
    layout = RunLayout.of(str(tmp_path_factory.mktemp("stream")))
    layout.problems.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([_problem(i) for i in range(PROBLEMS)], schema=PROBLEM_SCHEMA),
                   layout.problem_file("train"), row_group_size=3)
    write_manifest(layout.problems, fingerprint="p")
    a = []
    for i in range(PROBLEMS - 5):  # p035.. are missing
        answer = _problem(i)["answer"]
        if i % 7 == 1:
            a.append(_rationale("a", i, "", error="engine said no"))
        elif i % 7 == 2:
            a.append(_rationale("a", i, "   "))
        elif i % 7 == 3:
            a.append(_rationale("a", i, f"so the answer is {answer} but", finish="length"))
        elif i % 7 == 4:
            wrong = _problem(i)["choices"][(i + 1) % 3]
            a.append(_rationale("a", i, f"The answer is ({'abc'[(i + 1) % 3]}) {wrong}."))
        else:
            a.append(_rationale("a", i, f"Because {answer} fits."))
    a += [_rationale("a", 5, "", error="a later failed copy"), _rationale("a", 1, "A later usable copy of p001."),
          _rationale("a", 6, "A later usable copy of p006.")]  # repeated ids: the last usable row wins
    folder = layout.teacher_dir("a")
    folder.mkdir(parents=True)
    for shard, start in enumerate(range(0, len(a), 14)):
        pq.write_table(pa.Table.from_pylist(a[start:start + 14], schema=RATIONALE_SCHEMA),
                       folder / f"shard-{shard:06d}.parquet")
    write_manifest(folder, rows=len(a))
    b = [_rationale("b", i, f"B thinks {_problem(i)['answer']}.") for i in range(0, PROBLEMS, 2)]
    folder = layout.teacher_dir("b")
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(b[::-1], schema=RATIONALE_SCHEMA), folder / "imported.parquet",
                   row_group_size=4)
    write_manifest(folder, rows=len(b))
    return layout


@pytest.fixture(scope="module")
def tokens() -> Tokenisation:
    """The tiny student's tokenizer, limits that truncate some prompts and targets."""
    from tinyllm_ray.models import resolve_model

    tasks = tasks_for("predict: ", 1.0, [("a", "explain: ", 0.5), ("b", "rationale: ", 1.0)])
    return Tokenisation(resolve_model("builtin:tiny-llama"), tuple(tasks), 24, 8)


def _for(tokens: Tokenisation, teachers: list[str]) -> Tokenisation:
    """``tokens`` for the answer and ``teachers`` only."""
    tasks = tasks_for("predict: ", 1.0, [(name, "explain: ", 1.0) for name in teachers])
    return Tokenisation(tokens.model_path, tuple(tasks), tokens.max_input_tokens, tokens.max_target_tokens)


def _whole_split(layout: RunLayout, tokens: Tokenisation, fraction: float = 1.0, seed: int = 0,
                 rationale_filter=None):
    from transformers import AutoTokenizer

    problems = take_fraction(pq.read_table(layout.problem_file("train")).cast(PROBLEM_SCHEMA), fraction, seed)
    table, counts = build_training_table(problems, {t: load_rationales(layout, t) for t in ("a", "b")},
                                         rationale_filter)
    return tokenise_table(table, AutoTokenizer.from_pretrained(tokens.model_path), tokens), counts


@pytest.fixture(autouse=True)
def ordered_ingest():
    """Ray Data's execution options as train() ingests the stream: in order."""
    from ray.data import DataContext

    options = DataContext.get_current().execution_options
    saved, options.preserve_order = options.preserve_order, True
    yield
    options.preserve_order = saved


def _streamed(training_set) -> pa.Table:
    return pa.Table.from_pylist(training_dataset(training_set).take_all())


@pytest.mark.parametrize("fraction,rationale_filter", [(1.0, None), (1.0, RationaleFilter()),
                                                       (0.6, RationaleFilter(drop_truncated=True))],
                         ids=["all-no-filter", "all-default-filter", "fraction-and-truncated-filter"])
def test_stream_holds_the_whole_split_join_rows_and_counts(ray_cluster, layout, tokens, tmp_path, fraction,
                                                           rationale_filter):
    expected, expected_counts = _whole_split(layout, tokens, fraction, 3, rationale_filter)
    assert expected.column("target_ids__rationale__a").null_count > 0  # some rows have no rationale of a
    built = build_training_set(layout, ["a", "b"], tmp_path / "set", tokens, fraction, 3, rationale_filter,
                               scatter_rows=7, bucket_rows=6)
    assert len(built.files) > 1  # several buckets were joined apart
    assert built.counts == expected_counts and built.rows == expected.num_rows
    got = _streamed(built)
    assert sorted(got.to_pylist(), key=lambda r: r["id"]) == sorted(expected.to_pylist(), key=lambda r: r["id"])
    assert not (tmp_path / "set" / "scratch").exists()


@pytest.mark.parametrize("datasource_v2", [False, True], ids=["parquet-v1", "parquet-v2"])
def test_two_builds_stream_the_same_seeded_order(ray_cluster, layout, tokens, tmp_path, datasource_v2, monkeypatch):
    from ray.data import DataContext

    monkeypatch.setattr(DataContext.get_current(), "use_datasource_v2", datasource_v2)  # runtime.connect: v1
    first = _streamed(build_training_set(layout, ["a", "b"], tmp_path / "one", tokens, seed=7, scatter_rows=5,
                                         bucket_rows=4)).column("id").to_pylist()
    second = _streamed(build_training_set(layout, ["a", "b"], tmp_path / "two", tokens, seed=7, scatter_rows=50,
                                          bucket_rows=9)).column("id").to_pylist()
    other_seed = _streamed(build_training_set(layout, ["a", "b"], tmp_path / "three", tokens, seed=8)).column("id")
    assert first == second  # same seed: same order, whatever the task and bucket sizes
    assert first == sorted(first, key=lambda i: (order_keys([i], 7)[0], i))
    assert first != sorted(first) and first != other_seed.to_pylist()


def test_numpy_batches_collate_like_the_rows_tokenised_in_one_process(ray_cluster, layout, tokens, tmp_path):
    """What the Train worker pulls (``iter_batches(batch_format="numpy")``: list columns as object arrays, None
    where a task has no target) pads to the tensors of the same rows tokenised in one process."""
    expected, _ = _whole_split(layout, tokens)
    built = build_training_set(layout, ["a", "b"], tmp_path / "set", tokens, bucket_rows=100)
    collate = Collator(tokens.tasks, False, pad_token_id=0)
    pulled = list(training_dataset(built).iter_batches(batch_size=8, batch_format="numpy"))
    by_id = {row["id"]: row for row in expected.to_pylist()}
    for batch in pulled:
        rows = [by_id[i] for i in batch["id"]]
        same = collate.grouped({k: [r[k] for r in rows] for k in expected.column_names}, 2)
        assert [{k: v.tolist() for k, v in g.items()} for g in collate.grouped(batch, 2)] == \
            [{k: v.tolist() for k, v in g.items()} for g in same]
    assert sum(len(b["id"]) for b in pulled) == PROBLEMS


def test_answer_only_and_missing_rationales(ray_cluster, layout, tokens, tmp_path):
    built = build_training_set(layout, [], tmp_path / "none", _for(tokens, []))
    assert built.counts == {} and built.rows == PROBLEMS
    assert _streamed(built).column_names == ["id", "prompt_ids__answer", "target_ids__answer"]
    with pytest.raises(ArtifactError, match="rationales for teacher 'nobody' are missing"):
        build_training_set(layout, ["nobody"], tmp_path / "nobody", _for(tokens, ["nobody"]))
    with pytest.raises(ValueError, match="not the answer and teachers"):
        build_training_set(layout, ["a"], tmp_path / "mismatch", tokens)


def test_a_bad_rationale_file_is_named(ray_cluster, layout, tokens, tmp_path):
    """Column types are checked from the footers in the driver; nulls where the rows are read, in a task."""
    import shutil

    bad = RunLayout.of(str(tmp_path / "bad"))
    shutil.copytree(layout.problems, bad.problems)
    folder = bad.teacher_dir("a")
    folder.mkdir(parents=True)
    write_manifest(folder, rows=1)
    rows = [_rationale("a", 0, "fine"), {**_rationale("a", 1, "fine"), "id": None}]
    pq.write_table(pa.Table.from_pylist(rows), folder / "shard-000000.parquet")
    with pytest.raises(ArtifactError, match=r"shard-000000\.parquet: column 'id' has null values"):
        build_training_set(bad, ["a"], tmp_path / "set", _for(tokens, ["a"]))
    pq.write_table(pa.table({"id": ["p000"], "rationale": [["not", "text"]], "error": [None], "finish_reason": ["stop"]}),
                   folder / "shard-000000.parquet")
    with pytest.raises(ArtifactError, match=r"shard-000000\.parquet: columns do not match the expected schema"):
        build_training_set(bad, ["a"], tmp_path / "set", _for(tokens, ["a"]))
