"""`inspect` over a teacher folder whose shard was damaged after it finished: the folder is summarised from the
files that read, and the damaged one is a finding (not a crash), with what to run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tinyllm_ray.schemas import RATIONALE_SCHEMA
from tinyllm_ray.summary import summarize
from tinyllm_ray.summary_table import findings


def rows(*ids: str) -> pa.Table:
    return pa.Table.from_pylist([{"id": i, "dataset": "demo", "teacher": "t", "model": "m", "prompt": "p",
                                  "rationale": "because", "num_prompt_tokens": 3, "num_generated_tokens": 4,
                                  "finish_reason": "stop", "sampling_params": "{}", "error": None} for i in ids],
                                schema=RATIONALE_SCHEMA)


def teacher_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "t"
    folder.mkdir()
    pq.write_table(rows("a", "b"), folder / "shard-000000.parquet")
    pq.write_table(rows("c", "d"), folder / "shard-000001.parquet")
    (folder / "manifest.json").write_text(json.dumps({"counts": {"rows": 4}, "teacher": {"model": "m"}}))
    return folder


def test_a_sound_folder_has_no_finding(tmp_path):
    summary = summarize(teacher_folder(tmp_path))
    assert summary["t"]["rows"] == 4 and summary["t"]["complete"] and findings(summary) == []


def test_a_truncated_shard_is_a_finding_and_the_rest_is_summarised(tmp_path):
    folder = teacher_folder(tmp_path)
    damaged = folder / "shard-000001.parquet"
    damaged.write_bytes(damaged.read_bytes()[:50])
    summary = summarize(folder)["t"]
    assert summary["rows"] == 2 and summary["complete"] is False
    assert len(summary["damaged"]) == 1 and summary["damaged"][0].startswith("shard-000001.parquet: not a readable")
    [finding] = findings({"rationales/t": summary})
    assert "rationales/t: damaged, shard-000001.parquet" in finding and "tinyllm-ray generate" in finding


def test_fewer_rows_than_the_manifest_counts_is_a_finding(tmp_path):
    folder = teacher_folder(tmp_path)
    pq.write_table(rows("c"), folder / "shard-000001.parquet")  # replaced by hand with a shorter file
    summary = summarize(folder)["t"]
    assert summary["damaged"] == ["3 rows where the manifest counts 4"] and summary["complete"] is False
