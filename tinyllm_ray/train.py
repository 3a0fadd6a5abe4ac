"""Recipe: problems + rationales -> multi-task training set -> Ray Train workers running DeepSpeed ZeRO -> HF student.

The loop below is the only training loop in the project; every worker runs it on its Ray Data shard.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tinyllm_ray.config import JobConfig, stable_hash
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.schemas import RATIONALE_SCHEMA, ArtifactError, read_manifest, read_table, write_manifest

log = logging.getLogger("tinyllm_ray")


class TrainingError(RuntimeError):
    """Training could not start or finish; the message says which input or setting to fix."""


def _load_model(model_path: str, seq2seq: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    return cls.from_pretrained(model_path, dtype=torch.float32)


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """One Ray Train worker: build the student under DeepSpeed, stream its shard, export HF weights on rank 0."""
    import deepspeed
    import ray.train
    import torch
    from transformers import AutoTokenizer

    from tinyllm_ray.losses import multi_task_loss, per_sequence_loss
    from tinyllm_ray.training_data import Collator, Task

    # DeepSpeed would otherwise JIT-compile a shared-memory op (~100 s on CPU) that training never uses.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # Adopt the process group Ray Train created, so ZeRO-3's partitioned loading sees the real world size.
    deepspeed.init_distributed()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(cfg["seed"] + rank)
    ds_config = cfg["deepspeed"]
    seq2seq = cfg["seq2seq"]
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_path"])
    if ds_config["zero_optimization"]["stage"] == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds_config)  # noqa: F841 - partitions weights while they load
    model = _load_model(cfg["model_path"], seq2seq)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    warmup = cfg["warmup_steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    tasks = [Task(**t) for t in cfg["tasks"]]
    weights = torch.tensor([t.weight for t in tasks])
    collate = Collator(tokenizer, tasks, seq2seq, cfg["max_input_tokens"], cfg["max_target_tokens"])
    shard = ray.train.get_dataset_shard("train")
    micro_steps, started = 0, time.time()
    tokens = 0
    for epoch in range(cfg["epochs"]):
        batches = shard.iter_batches(batch_size=ds_config["train_micro_batch_size_per_gpu"], batch_format="numpy",
                                     drop_last=True)
        for index, raw in enumerate(batches):
            if index >= cfg["micro_steps_per_epoch"] or micro_steps >= cfg["total_micro_steps"]:
                break  # every rank must take the same number of steps or ZeRO's collectives hang
            batch = {k: v.to(engine.device) for k, v in collate({k: list(v) for k, v in raw.items()}).items()}
            if seq2seq:
                decoder_inputs = engine.module.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
                logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                decoder_input_ids=decoder_inputs).logits
            else:
                logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            seq_losses = per_sequence_loss(logits, batch["labels"], shift=not seq2seq)
            loss, per_task = multi_task_loss(seq_losses, batch["task_ids"], weights)
            engine.backward(loss)
            engine.step()
            micro_steps += 1
            tokens += int(batch["attention_mask"].sum())
            step = micro_steps // ds_config["gradient_accumulation_steps"]
            if engine.is_gradient_accumulation_boundary() and step % cfg["log_every_steps"] == 0:
                metrics = {"step": step, "epoch": epoch, "loss": float(loss),
                           "tokens_per_s": tokens / max(time.time() - started, 1e-9)}
                metrics.update({f"loss/{tasks[t].name}": float(v) for t, v in per_task.items()})
                ray.train.report(metrics)
                if rank == 0:
                    print(f"[train] step {step}/{cfg['total_optimizer_steps']} loss {float(loss):.4f} "
                          + " ".join(f"{tasks[t].name}={float(v):.3f}" for t, v in per_task.items()), flush=True)
    _export(engine, tokenizer, rank, {"step": micro_steps // ds_config["gradient_accumulation_steps"],
                                      "train_seconds": time.time() - started, "train_tokens": tokens})


def _export(engine, tokenizer, rank: int, metrics: dict[str, Any]) -> None:
    """Gather full weights (ZeRO-3 shards them) and save a plain HF folder from rank 0 as the Ray checkpoint."""
    import ray.train

    if engine.zero_optimization_partition_weights():
        state = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank must call it
    else:
        state = engine.module.state_dict() if rank == 0 else None
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            engine.module.save_pretrained(folder, state_dict=state)
            tokenizer.save_pretrained(folder)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({**metrics, "final": True}, checkpoint=checkpoint)


def load_rationales(layout: RunLayout, teacher: str):
    directory = layout.teacher_dir(teacher)
    if read_manifest(directory) is None:
        raise ArtifactError(f"rationales for teacher {teacher!r} are missing or incomplete at {directory}: "
                            "run `tinyllm-ray generate` first")
    return read_table(directory, RATIONALE_SCHEMA)


def train(config: JobConfig, force: bool = False) -> dict[str, Any]:
    """The `train` stage; reuses an existing student whose inputs and settings are unchanged."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tinyllm_ray.deepspeed_config import build_deepspeed_config
    from tinyllm_ray.generate import load_frozen_problems
    from tinyllm_ray.models import is_encoder_decoder, resolve_model
    from tinyllm_ray.runtime import connect
    from tinyllm_ray.training_data import build_training_table, tasks_for

    layout = RunLayout.of(config.output_dir)
    problems = load_frozen_problems(layout, "train")
    teachers = config.distilled_teachers()
    rationales = {t.name: load_rationales(layout, t.name) for t in teachers}
    inputs = {t.name: read_manifest(layout.teacher_dir(t.name))["fingerprint"] for t in teachers}
    fingerprint = stable_hash({"student": config.student.model_dump(mode="json"),
                               "training": config.training.model_dump(mode="json", exclude={"log_every_steps"}),
                               "task_prefix": config.prompts.task_prefix, "rationales": inputs,
                               "prefixes": {t.name: t.rationale_prefix for t in teachers},
                               "problems": read_manifest(layout.problems)["fingerprint"]})
    existing = read_manifest(layout.student)
    if existing and existing.get("fingerprint") == fingerprint and not force:
        log.info("student: reusing %s", layout.student)
        return existing
    model_path = resolve_model(config.student.model)
    seq2seq = {"seq2seq": True, "decoder": False}.get(config.student.architecture)
    if seq2seq is None:
        seq2seq = is_encoder_decoder(model_path)
    table, usable = build_training_table(problems, rationales)
    training = config.training
    world = training.num_workers
    micro_per_epoch, total_micro = micro_step_plan(table.num_rows, training)
    tasks = tasks_for(config.prompts.task_prefix, training.answer_weight,
                      [(t.name, t.rationale_prefix, config.alpha_for(t.name)) for t in teachers])
    loop_config = {
        "model_path": model_path, "seq2seq": seq2seq, "seed": training.seed,
        "deepspeed": build_deepspeed_config(training, world),
        "learning_rate": training.learning_rate, "weight_decay": training.weight_decay,
        "warmup_steps": training.warmup_steps, "epochs": training.epochs,
        "micro_steps_per_epoch": micro_per_epoch, "total_micro_steps": total_micro,
        "total_optimizer_steps": total_micro // training.gradient_accumulation_steps,
        "tasks": [t.__dict__ for t in tasks], "log_every_steps": training.log_every_steps,
        "max_input_tokens": config.student.max_input_tokens, "max_target_tokens": config.student.max_target_tokens,
    }
    connect(config)
    resources = {"CPU": training.cpus_per_worker}
    if training.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=world, use_gpu=training.use_gpu, resources_per_worker=resources),
        datasets={"train": ray.data.from_arrow(table).random_shuffle(seed=training.seed)},
        run_config=RunConfig(name=f"{config.name}-{fingerprint}", storage_path=str(layout.train_storage)),
    )
    start = time.time()
    result = trainer.fit()
    if result.error:
        raise TrainingError(f"training failed: {result.error}")
    if result.checkpoint is None:
        raise TrainingError("training finished without exporting the student checkpoint")
    staging = layout.root / f".student.staging-{uuid.uuid4().hex[:8]}"
    with result.checkpoint.as_directory() as folder:
        shutil.copytree(folder, staging)
    if layout.student.exists():
        shutil.rmtree(layout.student)
    staging.rename(layout.student)
    metrics = dict(result.metrics or {})
    return write_manifest(
        layout.student, fingerprint=fingerprint, model=config.student.model, model_path=model_path, seq2seq=seq2seq,
        teachers=[t.name for t in teachers], alpha={t.name: config.alpha_for(t.name) for t in teachers},
        usable_rationales=usable, training_problems=table.num_rows, optimizer_steps=metrics.get("step"),
        train_tokens=metrics.get("train_tokens"), seconds=round(time.time() - start, 2),
        deepspeed=loop_config["deepspeed"])


def micro_step_plan(rows: int, training) -> tuple[int, int]:
    """(micro steps per epoch, total micro steps): equal on every rank, whole accumulation windows only."""
    world, micro = training.num_workers, training.micro_batch_size
    per_epoch = rows // (world * micro)
    if per_epoch == 0:
        raise TrainingError(f"{rows} training problems cannot fill one step of {world} workers x "
                            f"micro_batch_size {micro}: lower either")
    per_epoch -= per_epoch % training.gradient_accumulation_steps
    if per_epoch == 0:
        raise TrainingError("gradient_accumulation_steps is larger than the steps in one epoch: lower it")
    total = per_epoch * training.epochs
    if training.max_steps:
        total = min(total, training.max_steps * training.gradient_accumulation_steps)
    return per_epoch, total
