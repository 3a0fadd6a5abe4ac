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
            # gather the next parameters while this layer computes; the prefetch trace it needs stays valid because
            # ZeRO-3 runs one forward pass per micro-batch (run_length_groups)
            "overlap_comm": True,
        })
    if training.autocast == "bf16":
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    if training.dtype == "bf16":
        config["bf16"] = {"enabled": True}
    elif training.dtype == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0.0, "initial_scale_power": 16}
    return config


def run_length_groups(training: TrainingConfig) -> int:
    """Forward passes per micro-batch as training runs them: ``training.length_groups``, but 1 under ZeRO-3.

    ZeRO-3 records the order in which the first steps fetch parameters and prefetches along it; several length
    groups per micro-batch give every step a different number of forward passes, so the recorded order never
    repeats, DeepSpeed drops its trace and every fetch waits (the group count varies with the batch's lengths)."""
    return 1 if training.resolved_zero_stage == 3 else training.length_groups


def slow_setting_warnings(training: TrainingConfig, seq2seq: bool | None = None) -> list[str]:
    """Legal settings that only cost time (or, for fp16 T5 students, the run), to warn about before training
    starts. ``seq2seq``: whether the student is an encoder-decoder model (None: not known yet)."""
    warnings = []
    if training.dtype == "fp16" and seq2seq:  # T5 was pretrained in bf16: its activations outgrow fp16's range
        warnings.append(
            "training.dtype=fp16 with a T5 (seq2seq) student: DeepSpeed's fp16 casts every parameter and T5's "
            "activations overflow fp16 (losses go inf/NaN, or the loss scaler skips step after step); set "
            "training.dtype=bf16 (GPUs since Ampere) or fp32")
    if training.resolved_zero_stage == 3 and training.length_groups > 1 and "length_groups" in training.model_fields_set:
        warnings.append(
            f"training.length_groups={training.length_groups} under ZeRO-3: trained as 1 group per micro-batch "
            "(a varying number of forward passes per step breaks ZeRO-3's parameter prefetch); use ZeRO-2 to keep "
            "length groups")
    if training.num_workers == 1 and training.resolved_zero_stage > 0:
        warnings.append(
            f"training.zero_stage={training.zero_stage} with 1 worker: ZeRO shards state across workers, with one "
            "it only adds copies into and out of its flat fp32 partitions, every step (benchmarks/RESULTS.md); "
            "set training.zero_stage=0 or auto")
    return warnings
