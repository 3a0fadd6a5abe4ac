"""Build the DeepSpeed config dict from the typed training config (never hand-written JSON). Pure."""

from __future__ import annotations

from typing import Any

from tinyllm_ray.config import TrainingConfig


def build_deepspeed_config(training: TrainingConfig, world_size: int) -> dict[str, Any]:
    """ZeRO stage, batch sizes and precision; the optimizer is torch's AdamW, passed to deepspeed.initialize.

    torch AdamW instead of DeepSpeed's CPU/fused Adam: those JIT-compile C++/CUDA ops for minutes at start-up.
    """
    stage = training.resolved_zero_stage
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": training.micro_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "train_batch_size": training.micro_batch_size * training.gradient_accumulation_steps * world_size,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if stage == 3:
        config["zero_optimization"].update({
            "stage3_gather_16bit_weights_on_model_save": True,
            "overlap_comm": False,
        })
    if training.autocast == "bf16":
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    if training.dtype == "bf16":
        config["bf16"] = {"enabled": True}
    elif training.dtype == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0.0, "initial_scale_power": 16}
    return config


def slow_setting_warnings(training: TrainingConfig) -> list[str]:
    """Legal settings that only cost time, to warn about before training starts."""
    warnings = []
    if training.num_workers == 1 and training.resolved_zero_stage > 0:
        warnings.append(
            f"training.zero_stage={training.zero_stage} with 1 worker: ZeRO shards state across workers, with one "
            "it only adds copies into and out of its flat fp32 partitions, every step (benchmarks/RESULTS.md); "
            "set training.zero_stage=0 or auto")
    return warnings
