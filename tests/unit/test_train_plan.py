"""Step planning and resume arithmetic of the training loop (pure helpers; no Ray, no torch)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tinyllm_ray.config import TrainingConfig, load_config
from tinyllm_ray.train import (OPERATIONAL_SETTINGS, TrainingError, checkpoint_due, final_export, micro_step_plan,
                               resume_position, trained_settings)


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
                                                    "training.allocator=system"]).training)
    assert base == changed
    assert OPERATIONAL_SETTINGS <= set(TrainingConfig.model_fields)
    assert not OPERATIONAL_SETTINGS & set(base)


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

    from tinyllm_ray.train import STATE_FILE, _read_resume_state

    assert _read_resume_state(None) is None
    (tmp_path / STATE_FILE).write_text(json.dumps({"kind": "deepspeed", "tag": "deepspeed", "step": 4,
                                                   "micro_steps": 4}))
    state = _read_resume_state(Checkpoint.from_directory(tmp_path))
    assert state["step"] == 4 and state["checkpoint"].path == str(tmp_path)
    (tmp_path / STATE_FILE).unlink()
    with pytest.raises(TrainingError, match="--force"):
        _read_resume_state(Checkpoint.from_directory(tmp_path))
