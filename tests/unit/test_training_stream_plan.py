"""The plan of the streamed training set: order keys, buckets, the data fraction per piece, read pieces, counts."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tinyllm_ray.training_data import COUNT_KEYS, take_fraction
from tinyllm_ray.training_stream_plan import (ReadPiece, bucket_count, buckets_of, kept_positions, merge_counts,
                                              order_keys, read_plan, training_rows)


def test_order_keys_are_seeded_and_stable():
    ids = [f"q{i}" for i in range(50)]
    keys = order_keys(ids, 0)
    assert keys == order_keys(ids, 0)  # no process-salted hash(): every build, every node agrees
    assert keys != order_keys(ids, 1)
    assert all(0 <= k < 2**64 for k in keys) and len(set(keys)) == len(ids)
    assert keys[:3] == order_keys(ids[:3], 0)  # a key depends on its id only
    assert sorted(ids, key=lambda i: order_keys([i], 0)[0]) != ids  # a shuffle


def test_buckets_are_in_range_and_follow_the_key():
    keys = sorted(order_keys([f"q{i}" for i in range(500)], 3))
    buckets = buckets_of(keys, 7)
    assert buckets == sorted(buckets) and set(buckets) == set(range(7))  # monotone: buckets in order = key order
    assert buckets_of([0, 2**64 - 1], 5) == [0, 4]
    assert bucket_count(0) == 1 and bucket_count(10, 4) == 3 and bucket_count(12, 4) == 3


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.13, 0.0001])
def test_kept_positions_per_piece_are_take_fraction_of_the_whole_split(fraction):
    total = 103
    table = pa.table({"id": [f"q{i}" for i in range(total)]})
    expected = take_fraction(table, fraction, 5).column("id").to_pylist()
    kept = []
    for start in range(0, total, 10):
        count = min(10, total - start)
        kept += [f"q{start + int(i)}" for i in kept_positions(total, fraction, 5, start, count)]
    assert kept == expected and len(kept) == training_rows(total, fraction)


def test_read_plan_takes_whole_row_groups_and_counts_positions_across_files():
    pieces = read_plan("a", [("f1", [3, 3, 3]), ("f2", [10]), ("f3", []), ("f4", [2, 2]), ("f5", [1])],
                       target_rows=6)
    assert pieces == [ReadPiece("a", (("f1", (0, 1)),), 0, 6), ReadPiece("a", (("f1", (2,)),), 6, 3),
                      ReadPiece("a", (("f2", (0,)),), 9, 10), ReadPiece("a", (("f4", (0, 1)), ("f5", (0,))), 19, 5)]
    assert all(ReadPiece.from_item(p.as_item()) == p for p in pieces)
    assert read_plan("a", []) == [] and read_plan("a", [("f", [])]) == []
    shards = read_plan("a", [(f"shard-{i}", [4]) for i in range(10)], target_rows=16)  # small files share a piece
    assert [len(p.parts) for p in shards] == [4, 4, 2] and [p.start for p in shards] == [0, 16, 32]


def test_an_empty_split_keeps_no_row_whatever_the_fraction():
    assert training_rows(0, 0.5) == training_rows(0, 1.0) == 0 and training_rows(3, 0.1) == 1


def test_merge_counts_sums_buckets_and_keeps_every_outcome():
    one = {"a": {**dict.fromkeys(COUNT_KEYS, 0), "usable": 2, "missing": 1}}
    two = {"a": {**dict.fromkeys(COUNT_KEYS, 0), "usable": 1, "failed": 4}}
    total = merge_counts([one, {}, two], ["a", "b"])
    assert total["a"]["usable"] == 3 and total["a"]["missing"] == 1 and total["a"]["failed"] == 4
    assert set(total["a"]) == set(COUNT_KEYS) and set(total["b"].values()) == {0}


def test_a_task_artifact_error_is_found_in_ray_data_text():
    """Ray Data's UserCodeException keeps a failed task's error as traceback text only."""
    from tinyllm_ray.training_stream import _artifact_cause

    text = ("ray::Map(_scatter)() (pid=1)\n  File \"x.py\", line 1, in _read\n"
            "\x1b[36mtinyllm_ray.schemas.ArtifactError: /d/shard-0.parquet: column 'id' has null values; rerun\n\n"
            "The above exception was the direct cause of the following exception:\n")
    assert _artifact_cause(RuntimeError(text)) == "/d/shard-0.parquet: column 'id' has null values; rerun"
    assert _artifact_cause(RuntimeError("ValueError: something else")) is None
