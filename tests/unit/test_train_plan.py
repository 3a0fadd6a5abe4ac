"""The training plan (tinyllm_ray.train_plan, pure: no Ray, no torch): the worker contract, step planning, resume
arithmetic, the student fingerprint and the state-file protocol."""

from __future__ import annotations

import dataclasses
import pickle
from types import SimpleNamespace

import pytest

from tinyllm_ray.config import TrainingConfig, load_config
from tinyllm_ray.train import final_export
from tinyllm_ray.train_plan import (TrainingError, checkpoint_due, micro_step_plan, resume_position,
                                    trained_settings)


def test_micro_step_plan_whole_windows_and_max_steps():
    training = TrainingConfig(num_workers=2, micro_batch_size=2, gradient_accumulation_steps=1, epochs=2)
    assert micro_step_plan(16, training) == (4, 8)
    training = TrainingConfig(num_workers=2, micro_batch_size=2, gradient_accumulation_steps=3, epochs=2, max_steps=1)
    assert micro_step_plan(16, training) == (3, 3)
    with pytest.raises(TrainingError, match="micro_batch_size"):
        micro_step_plan(3, TrainingConfig(num_workers=2, micro_batch_size=2))


@pytest.mark.parametrize("done,per_epoch,expected", [
    (0, 4, (0, 0)),   # fresh start
    (2, 4, (0, 2)),   # mid-epoch: skip the two micro-batches already trained on
    (4, 4, (1, 0)),   # checkpoint at an epoch end: next epoch from its first batch
    (6, 4, (1, 2)),
    (9, 3, (3, 0)),   # every planned epoch done: the loop has nothing left to do
])
def test_resume_position(done: int, per_epoch: int, expected: tuple[int, int]):
    assert resume_position(done, per_epoch) == expected


def test_resume_position_rejects_empty_epochs():
    with pytest.raises(ValueError):
        resume_position(3, 0)


def _attempt(checkpoint: int, per_epoch: int, epochs: int, total: int, every: int, crash_at: int | None):
    """The worker loop's control flow: (batches trained as (epoch, index), last checkpoint's micro steps)."""
    start_epoch, skip = resume_position(checkpoint, per_epoch)
    done, trained = checkpoint, []
    for epoch in range(start_epoch, epochs):
        for index in range(per_epoch):
            if done >= total:
                return trained, checkpoint
            if epoch == start_epoch and index < skip:
                continue
            done += 1
            trained.append((epoch, index))
            if checkpoint_due(done, every, total):
                checkpoint = done
            if done == crash_at:
                return trained, checkpoint
    return trained, checkpoint


def test_resume_then_finish_takes_exactly_the_planned_steps():
    per_epoch, epochs, total, every = 4, 2, 7, 2
    planned, _ = _attempt(0, per_epoch, epochs, total, every, crash_at=None)
    assert len(planned) == total
    for crash_at in range(1, total):
        first, checkpoint = _attempt(0, per_epoch, epochs, total, every, crash_at)
        second, _ = _attempt(checkpoint, per_epoch, epochs, total, every, crash_at=None)
        assert first[:checkpoint] + second == planned  # no batch repeated or skipped after the checkpoint


def test_checkpoint_due():
    assert [s for s in range(1, 9) if checkpoint_due(s, 2, 8)] == [2, 4, 6]  # not at 8: the final export follows
    assert not any(checkpoint_due(s, None, 8) for s in range(1, 9))
    assert [s for s in range(1, 9) if checkpoint_due(s, 3, 8)] == [3, 6]


def test_final_export_is_never_a_mid_run_checkpoint():
    mid, final = object(), object()
    result = SimpleNamespace(checkpoint=final, metrics={"step": 8, "final": True},
                             best_checkpoints=[(mid, {"step": 6}), (final, {"step": 8, "final": True})])
    assert final_export(result) == (final, {"step": 8, "final": True})
    result = SimpleNamespace(checkpoint=mid, metrics={"step": 6}, best_checkpoints=[(mid, {"step": 6})])
    with pytest.raises(TrainingError, match="without exporting"):
        final_export(result)
    with pytest.raises(TrainingError):
        final_export(SimpleNamespace(checkpoint=None, metrics=None, best_checkpoints=[]))


def test_operational_settings_do_not_change_what_is_trained():
    base = trained_settings(load_config("tiny").training)
    changed = trained_settings(load_config("tiny", ["training.checkpoint_every_steps=2", "training.max_failures=0",
                                                    "training.log_every_steps=5",
                                                    "training.allocator=system",
                                                    "training.keep_checkpoints=true"]).training)
    assert base == changed
    operational = {name for name, f in TrainingConfig.model_fields.items()
                   if (f.json_schema_extra or {}).get("fingerprint") == "operational"}
    # the allow-list train.py kept before the marks moved next to the config fields
    assert operational == {"log_every_steps", "checkpoint_every_steps", "max_failures", "custom_resources_per_worker",
                           "placement_strategy", "length_groups", "allocator", "keep_checkpoints"}
    assert not operational & set(base)


def test_auto_zero_stage_fingerprints_as_the_stage_it_runs():
    assert trained_settings(TrainingConfig(num_workers=2)) == trained_settings(TrainingConfig(num_workers=2,
                                                                                              zero_stage=2))
    assert trained_settings(TrainingConfig(num_workers=1)) == trained_settings(TrainingConfig(num_workers=1,
                                                                                              zero_stage=0))
    assert trained_settings(TrainingConfig(num_workers=2)) != trained_settings(TrainingConfig(num_workers=2,
                                                                                              zero_stage=3))


def test_checkpoint_settings_validate():
    assert TrainingConfig().checkpoint_every_steps == 50 and TrainingConfig().max_failures == 2
    assert TrainingConfig(checkpoint_every_steps=None).checkpoint_every_steps is None
    with pytest.raises(ValueError):
        TrainingConfig(checkpoint_every_steps=0)


def test_resume_state_is_read_from_the_checkpoint(tmp_path):
    import json

    from ray.train import Checkpoint

    from tinyllm_ray.train_plan import STATE_FILE
    from tinyllm_ray.train_worker import _read_resume_state

    assert _read_resume_state(None) is None
    (tmp_path / STATE_FILE).write_text(json.dumps({"kind": "deepspeed", "tag": "deepspeed", "step": 4,
                                                   "micro_steps": 4, "train_tokens": 10, "train_seconds": 1.0}))
    state = _read_resume_state(Checkpoint.from_directory(tmp_path))
    assert state["step"] == 4 and state["checkpoint"].path == str(tmp_path)
    assert state["loss_log"] == []  # written before checkpoints carried the loss log
    (tmp_path / STATE_FILE).unlink()
    with pytest.raises(TrainingError, match="--force"):
        _read_resume_state(Checkpoint.from_directory(tmp_path))


# ---------------------------------------------------------------- the student fingerprint

# Computed with train.py before train_plan existed (its OPERATIONAL_SETTINGS allow-list and
# config.student.model_dump), for fixed rationale and problem fingerprints: the marks in config.py must hash the same.
FINGERPRINTS_BEFORE = {
    ("tiny", ()): "2bc040a52a693395",
    ("demo", ()): "27266dda92bd14ae",
    ("tiny", ("training.zero_stage=auto", "training.num_workers=1")): "75dc9789e482b845",
    ("demo", ("training.rationale_filter.min_words=3", "training.alpha.smollm2_greedy=0.5")): "cd262c9df6e86cdc",
}


@pytest.mark.parametrize("preset,overrides", list(FINGERPRINTS_BEFORE))
def test_student_fingerprint_is_unchanged(preset, overrides):
    from tinyllm_ray.train_plan import student_fingerprint

    config = load_config(preset, list(overrides))
    rationales = {t.name: f"fp-{t.name}" for t in config.distilled_teachers()}
    assert student_fingerprint(config, rationales, "fp-problems") == FINGERPRINTS_BEFORE[(preset, overrides)]


def test_student_fingerprint_follows_what_is_trained():
    from tinyllm_ray.train_plan import student_fingerprint

    def fingerprint(*overrides):
        config = load_config("tiny", list(overrides))
        return student_fingerprint(config, {t.name: "r" for t in config.distilled_teachers()}, "p")

    base = fingerprint()
    assert fingerprint("training.log_every_steps=7", "training.length_groups=1") == base
    assert fingerprint("training.learning_rate=0.01") != base
    assert fingerprint("training.teachers=[tiny_a]") != base
    assert fingerprint('teachers.tiny_a.rationale_prefix="why: "') != base
    assert fingerprint("student.max_target_tokens=16") != base


# ---------------------------------------------------------------- the worker contract

def _spec(**changes):
    from tinyllm_ray.layout import RunLayout
    from tinyllm_ray.train_plan import worker_spec

    spec = worker_spec(load_config("tiny"), RunLayout.of("/tmp/tinyllm-spec-test"), "/models/student", False, 16)
    return dataclasses.replace(spec, **changes) if changes else spec


def test_worker_spec_of_the_tiny_preset():
    spec = _spec()
    assert (spec.micro_steps_per_epoch, spec.total_micro_steps, spec.total_optimizer_steps) == (4, 3, 3)
    assert [t.name for t in spec.tasks] == ["answer", "tiny_a", "tiny_b"] and isinstance(spec.tasks, tuple)
    assert (spec.micro_batch_size, spec.accumulation, spec.zero_stage) == (2, 1, 2)
    assert spec.metrics_dir.endswith("metrics/train") and spec.metrics_run == spec.experiment == "tiny"


def test_worker_spec_travels_to_workers_unchanged():
    import cloudpickle

    spec = _spec()
    assert pickle.loads(cloudpickle.dumps(spec)) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_worker_spec_is_frozen_and_owns_its_deepspeed_config():
    from tinyllm_ray.train_plan import WorkerSpec

    spec = _spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.learning_rate = 1.0
    given = dict(spec.deepspeed)
    copy = WorkerSpec(**{**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}, "deepspeed": given,
                         "tasks": list(spec.tasks)})
    given["zero_optimization"]["stage"] = 3
    assert copy.zero_stage == 2 and isinstance(copy.tasks, tuple)


@pytest.mark.parametrize("changes,message", [
    ({"tasks": ()}, "tasks"),
    ({"tasks": ({"name": "answer"},)}, "tasks"),
    ({"micro_steps_per_epoch": 0}, "micro_steps_per_epoch"),
    ({"total_micro_steps": 0}, "total_micro_steps"),
    ({"total_micro_steps": 9}, "total_micro_steps"),  # more than epochs x micro_steps_per_epoch (1 x 4)
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"length_groups": 0}, "length_groups"),
    ({"log_every_steps": 0}, "log_every_steps"),
    ({"checkpoint_every_steps": 0}, "checkpoint_every_steps"),
    ({"deepspeed": {"train_micro_batch_size_per_gpu": 2}}, "gradient_accumulation_steps"),
])
def test_worker_spec_rejects_inconsistent_values(changes, message):
    with pytest.raises(ValueError, match=message):
        _spec(**changes)


def test_worker_spec_rejects_steps_that_end_inside_an_accumulation_window():
    spec = _spec()
    accumulating = {**spec.deepspeed, "gradient_accumulation_steps": 2, "train_batch_size": 8}
    assert _spec(deepspeed=accumulating, micro_steps_per_epoch=4, total_micro_steps=4).total_optimizer_steps == 2
    with pytest.raises(ValueError, match="inside an accumulation window"):
        _spec(deepspeed=accumulating, micro_steps_per_epoch=4, total_micro_steps=3)
    with pytest.raises(ValueError, match="multiple of gradient_accumulation_steps"):
        _spec(deepspeed=accumulating, micro_steps_per_epoch=3, total_micro_steps=2)


def test_train_keeps_its_old_names():
    import tinyllm_ray.train as train_module
    from tinyllm_ray import train_plan, train_worker

    assert train_module.TrainingError is train_plan.TrainingError
    assert train_module.train_loop_per_worker is train_worker.default_loop


# ---------------------------------------------------------------- the state file

def test_state_files_round_trip(tmp_path):
    from tinyllm_ray.train_plan import (DEEPSPEED_TAG, Progress, StepRecord, checkpoint_state, final_state,
                                        read_state, write_state)

    progress = Progress(step=4, epoch=1, micro_steps=4, train_tokens=123, train_seconds=1.5, resumed_from_step=None,
                        worker_nodes=["a", "b"], worker_allocator="jemalloc")
    record = StepRecord(step=4, epoch=1, loss=2.5, task_losses={"answer": 1.0, "t": 1.5}, tokens=30,
                        train_tokens=123, seconds=0.1, finished_at=0.0)
    log = [record.loss_entry()]
    assert read_state(tmp_path) is None
    write_state(tmp_path, checkpoint_state(progress, log))
    mid = read_state(tmp_path)
    assert mid == {"kind": "deepspeed", "tag": DEEPSPEED_TAG, **progress.as_dict(), "loss_log": log}
    write_state(tmp_path, final_state(progress, log))
    final = read_state(tmp_path)
    assert final["kind"] == "final" and "tag" not in final and final["step"] == 4 and final["loss_log"] == log
    assert log == [{"step": 4, "loss": 2.5, "task_losses": {"answer": 1.0, "t": 1.5}}]


@pytest.mark.parametrize("content", ['{"kind": "other", "step": 1}', '{"kind": "deepspeed", "step": 1, '
                                     '"micro_steps": 1, "train_tokens": 1, "train_seconds": 1}', "not json"])
def test_state_files_of_something_else_are_refused(tmp_path, content):
    from tinyllm_ray.train_plan import STATE_FILE, read_state

    (tmp_path / STATE_FILE).write_text(content)
    with pytest.raises(TrainingError, match="--force"):
        read_state(tmp_path)


def test_the_plan_imports_no_heavy_module():
    import subprocess
    import sys

    code = ("import sys, tinyllm_ray.train_plan, tinyllm_ray.train_worker, tinyllm_ray.train; "
            "print(sorted(m for m in ('torch', 'ray', 'deepspeed', 'transformers') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
