"""The driver hears of each shard as soon as it is written, not when the next one is: the console's progress and
the per-shard log lines depend on it."""

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

WAIT_S = 60  # only breaks a deadlock: the second block waits for the consumer to have seen the first


def test_each_row_arrives_before_the_next_block_exists(ray_cluster, tmp_path):
    import ray

    from tinyllm_ray.runtime import rows_as_they_come

    seen_first = tmp_path / "seen-first"

    def produce(batch: dict, flag: str = str(seen_first)) -> dict:
        if int(batch["item"][0]) == 1:  # the second block is made only once the first has reached the consumer
            deadline = time.time() + WAIT_S
            while not Path(flag).exists() and time.time() < deadline:
                time.sleep(0.05)
            batch["saw_first"] = [Path(flag).exists()]
        else:
            batch["saw_first"] = [False]
        return batch

    dataset = ray.data.from_items([{"item": 0}, {"item": 1}], override_num_blocks=2).map_batches(
        produce, batch_size=1, concurrency=2, num_cpus=0.5)
    rows = []
    for row in rows_as_they_come(dataset):
        rows.append(row)
        if row["item"] == 0:
            seen_first.touch()
    assert [r["item"] for r in rows] == [0, 1]
    assert rows[1]["saw_first"], "the first row was handed over only after the second block was made"
