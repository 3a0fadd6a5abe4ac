"""Ray Train failure handling on the real stack: a training worker process is SIGKILLed mid-run, the worker group
restarts from the latest DeepSpeed checkpoint and the run still ends after exactly the planned optimiser steps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinyllm_ray.cli import app
from tinyllm_ray.schemas import read_manifest

pytestmark = pytest.mark.integration
runner = CliRunner()

EPOCHS, STEPS_PER_EPOCH, EVERY = 3, 4, 2  # tiny preset: 16 problems / (2 workers x micro batch 2) = 4 steps/epoch
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH


def _registered_checkpoints(storage: Path) -> list[str]:
    """Checkpoint folders Ray Train has registered (all ranks reported), read from its run snapshot."""
    names = []
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            state = json.loads(snapshot.read_text())
        except (OSError, ValueError):  # being rewritten
            continue
        names += [r["checkpoint_dir_name"] for r in state.get("checkpoint_results", [])]
    return names


def _train_worker_pids() -> list[int]:
    """Live Ray Train worker processes of this session's cluster (from the GCS actor table, not a process scan,
    so workers of other Ray clusters on the machine are never touched)."""
    import ray._private.state

    return sorted(a["Pid"] for a in ray._private.state.actors().values()
                  if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE" and a["Pid"])


class WorkerKiller(threading.Thread):
    """Waits for the first registered mid-run checkpoint, then SIGKILLs one training worker process."""

    def __init__(self, storage: Path):
        super().__init__(daemon=True)
        self.storage, self.stop, self.killed = storage, threading.Event(), None
        self.checkpoints_seen: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(0.05):
            seen = [n for n in _registered_checkpoints(self.storage) if n.startswith("step_")]
            if not seen:
                continue
            pids = _train_worker_pids()
            if pids:
                self.checkpoints_seen = seen
                self.killed = pids[-1]
                os.kill(self.killed, signal.SIGKILL)
                return


@pytest.fixture(scope="module")
def rationales(ray_cluster, tmp_path_factory) -> Path:
    """Frozen problems and one teacher's rationales (one teacher: half the vLLM time of the full preset)."""
    out = tmp_path_factory.mktemp("resume_inputs")
    generated = runner.invoke(app, ["generate", "tiny", "-o", str(out), "--teacher", "tiny_a"])
    assert generated.exit_code == 0, generated.output
    return out


@pytest.mark.parametrize("stage", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_killed_worker_resumes_from_latest_checkpoint(rationales: Path, tmp_path: Path, stage: int):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    for part in ("problems", "rationales"):
        shutil.copytree(rationales / part, out / part)
    started = time.time()
    killer = WorkerKiller(out / "ray_train")
    killer.start()
    args = ["train", "tiny", "-o", str(out), "--set", "training.teachers=[tiny_a]",
            "--set", f"training.zero_stage={stage}", "--set", f"training.epochs={EPOCHS}",
            "--set", f"training.max_steps={TOTAL_STEPS}", "--set", f"training.checkpoint_every_steps={EVERY}",
            "--set", "training.max_failures=2"]
    try:
        result = runner.invoke(app, args)
    finally:
        killer.stop.set()
        killer.join(timeout=10)
    assert result.exit_code == 0, result.output
    assert killer.killed is not None, "no training worker was killed (training ended before the first checkpoint?)"
    manifest = read_manifest(out / "student")
    print(f"ZeRO-{stage}: train {time.time() - started:.0f}s; killed pid {killer.killed} after "
          f"{killer.checkpoints_seen}; resumed from step {manifest['resumed_from_step']}")
    assert manifest["optimizer_steps"] == TOTAL_STEPS
    assert manifest["deepspeed"]["zero_optimization"]["stage"] == stage
    # The restarted attempt loaded a mid-run checkpoint (not a fresh start, not the end of training).
    resumed = manifest["resumed_from_step"]
    assert resumed is not None and resumed % EVERY == 0 and EVERY <= resumed < TOTAL_STEPS, manifest
    state = json.loads((out / "student" / "tinyllm_train_state.json").read_text())
    assert state["kind"] == "final" and state["step"] == TOTAL_STEPS and state["resumed_from_step"] == resumed
    model = AutoModelForCausalLM.from_pretrained(out / "student")
    assert model.config.model_type == "llama"
    # Ray Train keeps the final export plus the latest DeepSpeed checkpoint, which holds every rank's ZeRO shard.
    kept = [n for n in _registered_checkpoints(out / "ray_train") if n.startswith("step_")]
    assert kept, "the latest mid-run checkpoint should be kept next to the final export"
    folder = next((out / "ray_train").glob(f"*/{kept[-1]}"))
    shards = sorted(p.name for p in (folder / "deepspeed").glob("*optim_states.pt"))
    assert len(shards) == 2, shards
    if stage == 3:
        # The driver "died" after the final export was registered but before the student folder was written:
        # re-running the same command continues the same Ray Train run, which already holds the final export.
        exported = (out / "student" / "model.safetensors").read_bytes()
        shutil.rmtree(out / "student")
        again = runner.invoke(app, args)
        assert again.exit_code == 0, again.output
        rerun = read_manifest(out / "student")
        assert rerun["optimizer_steps"] == TOTAL_STEPS and rerun["resumed_from_step"] == resumed
        assert (out / "student" / "model.safetensors").read_bytes() == exported
