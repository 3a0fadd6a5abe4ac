"""Generation survives crashes: finished shards are kept and skipped, a killed teacher actor loses nothing."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinyllm_ray.cli import app
from tinyllm_ray.schemas import MANIFEST, RATIONALE_SCHEMA, read_manifest, read_table

pytestmark = pytest.mark.integration
runner = CliRunner()
SMALL_SHARDS = ["--set", "teachers.tiny_a.resources.shard_size=2", "--set", "teachers.tiny_b.resources.shard_size=2"]


def generate(out: Path, *extra: str):
    return runner.invoke(app, ["generate", "tiny", "-o", str(out), *SMALL_SHARDS, *extra])


def test_rerun_regenerates_only_missing_shards(ray_cluster, tmp_path: Path):
    out = tmp_path / "run"
    first = generate(out, "--teacher", "tiny_a")
    assert first.exit_code == 0, first.output
    folder = out / "rationales" / "tiny_a"
    shards = sorted(folder.glob("shard-*.parquet"))
    assert len(shards) == 8 and read_manifest(folder)["shards"] == 8
    complete = read_table(folder, RATIONALE_SCHEMA).sort_by("id")
    # A crash after 6 of 8 shards: no manifest, two shard files missing.
    (folder / MANIFEST).unlink()
    for lost in shards[2:4]:
        lost.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in shards if p.exists()}
    resumed = generate(out, "--teacher", "tiny_a")
    assert resumed.exit_code == 0, resumed.output
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.parquet") if p.name in kept} == kept
    assert len(list(folder.glob("shard-*.parquet"))) == 8
    again = read_table(folder, RATIONALE_SCHEMA).sort_by("id")
    assert again.num_rows == 16
    assert again.column("rationale").to_pylist() == complete.column("rationale").to_pylist()  # greedy: same text

    # A finished teacher with a shard damaged and one deleted afterwards: inspect names the damaged one, generate
    # writes those two again and leaves the others as they were
    damaged, deleted = shards[5], shards[6]
    damaged.write_bytes(damaged.read_bytes()[:100])
    inspected = runner.invoke(app, ["inspect", str(out)])
    assert inspected.exit_code == 0 and "damaged, shard-000005.parquet" in inspected.output, inspected.output
    deleted.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in shards if p not in (damaged, deleted)}
    healed = generate(out, "--teacher", "tiny_a")
    assert healed.exit_code == 0, healed.output
    assert "2 of 8 shards" in healed.output and "cannot be reused" in healed.output, healed.output
    assert {p.name: p.stat().st_mtime_ns for p in shards if p not in (damaged, deleted)} == kept
    assert deleted.is_file()
    assert read_manifest(folder) is not None
    assert read_table(folder, RATIONALE_SCHEMA).sort_by("id").column("rationale").to_pylist() == \
        complete.column("rationale").to_pylist()


def test_partial_output_of_another_config_is_refused(ray_cluster, tmp_path: Path):
    out = tmp_path / "run"
    assert generate(out, "--teacher", "tiny_a").exit_code == 0
    (out / "rationales" / "tiny_a" / MANIFEST).unlink()
    changed = generate(out, "--teacher", "tiny_a", "--set", "teachers.tiny_a.sampling.max_tokens=5")
    assert changed.exit_code == 2
    assert "partial output" in changed.output and "--force" in changed.output
    assert len(list((out / "rationales" / "tiny_a").glob("shard-*.parquet"))) == 8


def _kill_first_teacher_actor(folder: Path, killed: list[float], deadline: float) -> None:
    """Once a shard is on disk, SIGKILL a live teacher actor process (what a preempted node does).

    Only this test's own Ray processes are candidates: the local cluster's raylet is a child of this process.
    """
    import psutil

    while time.time() < deadline and not killed:
        if any(folder.glob("shard-*.parquet")):
            for proc in psutil.Process(os.getpid()).children(recursive=True):
                try:
                    title = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                if "TeacherActor" in title:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(time.time())
                    return
        time.sleep(0.05)


def test_killed_teacher_actor_loses_and_doubles_nothing(ray_cluster, tmp_path: Path):
    out = tmp_path / "run"
    folder = out / "rationales" / "tiny_a"
    killed: list[float] = []
    killer = threading.Thread(target=_kill_first_teacher_actor, args=(folder, killed, time.time() + 300))
    killer.start()
    result = generate(out, "--teacher", "tiny_a", "--set", "teachers.tiny_a.resources.shard_size=1",
                      "--set", "teachers.tiny_a.sampling.max_tokens=200")
    killer.join()
    assert killed, "the test must actually kill a teacher actor"
    assert result.exit_code == 0, result.output
    assert any(p.stat().st_mtime > killed[0] for p in folder.glob("shard-*.parquet")), "killed after the work ended"
    table = read_table(folder, RATIONALE_SCHEMA)
    ids = table.column("id").to_pylist()
    assert len(ids) == 16 and len(set(ids)) == 16
    assert read_manifest(folder)["counts"]["errors"] == 0
