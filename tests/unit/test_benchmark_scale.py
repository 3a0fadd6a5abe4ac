"""The scale section's training-stream part: its synthetic inputs and its result rows (the measurement itself runs in
the benchmark, not here)."""

from __future__ import annotations

import pyarrow.parquet as pq

from benchmarks import common
from benchmarks.scale import ScaleResult, write_stream_inputs
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.schemas import PROBLEM_SCHEMA, RATIONALE_SCHEMA, read_manifest, read_table


def test_stream_inputs_are_valid_artifacts(tmp_path):
    write_stream_inputs(tmp_path, 1500)
    layout = RunLayout.of(str(tmp_path))
    problems = read_table(layout.problem_file("train"), PROBLEM_SCHEMA)
    assert problems.num_rows == 1500 and problems.column("id").to_pylist()[-1] == "s1499"
    assert pq.ParquetFile(layout.problem_file("train")).metadata.num_row_groups == 2
    for teacher in ("t1", "t2"):
        rows = read_table(layout.teacher_dir(teacher), RATIONALE_SCHEMA)
        assert rows.column("id").to_pylist() == problems.column("id").to_pylist()
        assert set(rows.column("teacher").to_pylist()) == {teacher}
        assert read_manifest(layout.teacher_dir(teacher)) is not None
    assert read_manifest(layout.problems) is not None


def test_training_stream_rows():
    result = ScaleResult("scale", {"training_stream": [
        {"problems": 10_000, "seconds": 12.5, "peak_rss_mb": 300, "rss_after_ray_init_mb": 250, "build_s": 8.0,
         "set_mb": 12.5, "whole_split": {"seconds": 3.0, "peak_rss_mb": 400}}]})
    rows = result.rows()
    assert rows[0][1] == "training set of 10000 problems x 2 teachers" and "peak RSS 300 MB" in rows[0][-1] and "set 12.5 MB" in rows[0][-1]
    assert rows[1][1] == "whole-split join of 10000 problems x 2 teachers" and "peak RSS 400 MB" in rows[1][-1]
    assert all(len(row) == len(common.HEADER) for row in rows)
