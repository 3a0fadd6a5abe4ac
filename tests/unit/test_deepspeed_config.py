"""The DeepSpeed dict is generated from the typed training config with DeepSpeed's expected types."""

from __future__ import annotations

import json

import pytest

from tinyllm_ray.config import TrainingConfig, load_config
from tinyllm_ray.deepspeed_config import build_deepspeed_config


def walk(value, path=""):
    """Yield (dotted path, leaf) for every leaf of a nested dict."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{path}.{key}" if path else key)
    else:
        yield path, value


@pytest.mark.parametrize("micro, accumulation, world", [(1, 1, 1), (4, 1, 2), (3, 5, 4), (2, 8, 1)])
def test_batch_sizes(micro, accumulation, world):
    training = TrainingConfig(micro_batch_size=micro, gradient_accumulation_steps=accumulation)
    config = build_deepspeed_config(training, world_size=world)
    assert config["train_micro_batch_size_per_gpu"] == micro
    assert config["gradient_accumulation_steps"] == accumulation
    assert config["train_batch_size"] == micro * accumulation * world
    assert type(config["train_batch_size"]) is int


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_stages_below_3_have_no_stage3_keys(stage):
    config = build_deepspeed_config(TrainingConfig(zero_stage=stage), world_size=2)
    assert config["zero_optimization"] == {"stage": stage}
    assert type(config["zero_optimization"]["stage"]) is int


@pytest.mark.parametrize(("workers", "stage"), [(1, 0), (2, 2), (8, 2)])
def test_auto_stage_is_0_for_one_worker_and_2_for_more(workers, stage):
    training = TrainingConfig(num_workers=workers)
    assert training.zero_stage == "auto"
    assert build_deepspeed_config(training, world_size=workers)["zero_optimization"] == {"stage": stage}


def test_explicit_stage_wins_over_auto():
    assert TrainingConfig(num_workers=1, zero_stage=2).resolved_zero_stage == 2
    assert TrainingConfig(num_workers=4, zero_stage=0).resolved_zero_stage == 0


def test_stage_3_gathers_weights_on_save_and_overlaps_communication():
    config = build_deepspeed_config(TrainingConfig(zero_stage=3), world_size=2)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["overlap_comm"] is True  # parameter fetches overlap compute (one forward pass per micro-batch)


@pytest.mark.parametrize(("stage", "groups", "runs"), [(0, 2, 2), (2, 4, 4), (2, 1, 1), (3, 2, 1), (3, 8, 1)])
def test_zero_3_trains_one_length_group(stage, groups, runs):
    from tinyllm_ray.deepspeed_config import run_length_groups

    assert run_length_groups(TrainingConfig(num_workers=2, zero_stage=stage, length_groups=groups)) == runs


def test_worker_spec_carries_the_length_groups_that_run():
    from tinyllm_ray.layout import RunLayout
    from tinyllm_ray.train_plan import worker_spec

    def spec(*overrides):
        job = load_config("tiny", ["training.length_groups=3", *overrides])
        return worker_spec(job, RunLayout.of("/tmp/tinyllm-spec-test"), "/models/student", False, 16)

    assert spec("training.zero_stage=2").length_groups == 3
    assert spec("training.zero_stage=3").length_groups == 1


def test_length_groups_under_zero_3_warn_only_when_asked_for():
    from tinyllm_ray.deepspeed_config import slow_setting_warnings

    asked = slow_setting_warnings(TrainingConfig(num_workers=2, zero_stage=3, length_groups=4))
    assert len(asked) == 1 and "training.length_groups=4 under ZeRO-3" in asked[0]
    assert slow_setting_warnings(TrainingConfig(num_workers=2, zero_stage=3)) == []  # the default: resolved quietly
    assert slow_setting_warnings(TrainingConfig(num_workers=2, zero_stage=2, length_groups=4)) == []


@pytest.mark.parametrize(("dtype", "seq2seq", "warns"), [
    ("fp16", True, True), ("fp16", False, False), ("fp16", None, False),
    ("bf16", True, False), ("fp32", True, False)])
def test_fp16_with_a_t5_student_warns(dtype, seq2seq, warns):
    from tinyllm_ray.deepspeed_config import slow_setting_warnings

    found = [w for w in slow_setting_warnings(TrainingConfig(num_workers=2, dtype=dtype), seq2seq) if "fp16" in w]
    assert bool(found) == warns, found
    if warns:
        assert "T5 (seq2seq) student" in found[0] and "training.dtype=bf16" in found[0] and "fp32" in found[0]


def test_fp32_has_no_precision_blocks():
    config = build_deepspeed_config(TrainingConfig(dtype="fp32"), world_size=1)
    assert "bf16" not in config and "fp16" not in config


def test_bf16_block():
    config = build_deepspeed_config(TrainingConfig(dtype="bf16"), world_size=1)
    assert config["bf16"] == {"enabled": True}
    assert "fp16" not in config


def test_fp16_block_types():
    config = build_deepspeed_config(TrainingConfig(dtype="fp16"), world_size=1)
    fp16 = config["fp16"]
    assert fp16["enabled"] is True
    assert "bf16" not in config
    assert fp16["loss_scale"] == 0.0 and type(fp16["loss_scale"]) is float  # 0.0 = dynamic loss scaling
    assert type(fp16["initial_scale_power"]) is int


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_value_types(stage, dtype):
    config = build_deepspeed_config(TrainingConfig(zero_stage=stage, dtype=dtype, micro_batch_size=2,
                                                   gradient_accumulation_steps=3), world_size=2)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                "steps_per_print"):
        assert type(config[key]) is int, key  # not bool, not float
    assert type(config["zero_optimization"]["stage"]) is int
    assert type(config["gradient_clipping"]) is float and config["gradient_clipping"] > 0
    for path, leaf in walk(config):
        if path.endswith("enabled") or path in {"zero_allow_untested_optimizer", "wall_clock_breakdown"} \
                or path.startswith("zero_optimization.stage3_") or path == "zero_optimization.overlap_comm":
            assert type(leaf) is bool, path
        else:
            assert type(leaf) in (int, float), path
    json.dumps(config)  # serialisable as DeepSpeed JSON
    assert "optimizer" not in config  # torch AdamW is passed to deepspeed.initialize


def test_presets_build():
    for preset in ("tiny", "demo"):
        job = load_config(preset)
        config = build_deepspeed_config(job.training, job.training.num_workers)
        assert config["train_batch_size"] == job.training.micro_batch_size * job.training.num_workers


def test_config_is_fresh_each_call():
    training = TrainingConfig(zero_stage=3)
    first = build_deepspeed_config(training, 1)
    first["zero_optimization"]["stage"] = 0
    assert build_deepspeed_config(training, 1)["zero_optimization"]["stage"] == 3


def test_zero_with_one_worker_warns():
    from tinyllm_ray.config import TrainingConfig
    from tinyllm_ray.deepspeed_config import slow_setting_warnings

    assert "zero_stage=0" in slow_setting_warnings(TrainingConfig(num_workers=1, zero_stage=2))[0]
    assert slow_setting_warnings(TrainingConfig(num_workers=1, zero_stage=0)) == []
    assert slow_setting_warnings(TrainingConfig(num_workers=1)) == []  # auto: stage 0
    assert slow_setting_warnings(TrainingConfig(num_workers=2, zero_stage=3)) == []


def test_bf16_autocast_keeps_fp32_weights():
    """autocast: DeepSpeed's torch_autocast block, and neither bf16 nor fp16 (which would cast the weights)."""
    config = build_deepspeed_config(TrainingConfig(autocast="bf16"), world_size=1)
    assert config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert "bf16" not in config and "fp16" not in config
    assert "torch_autocast" not in build_deepspeed_config(TrainingConfig(), world_size=1)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_needs_fp32_weights(dtype):
    with pytest.raises(ValueError, match="training.autocast=bf16 keeps fp32 weights"):
        TrainingConfig(autocast="bf16", dtype=dtype)
