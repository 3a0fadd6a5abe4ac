"""Recipe: problems + rationales -> multi-task training set -> Ray Train workers running DeepSpeed ZeRO -> HF student.

The loop below is the only training loop in the project; every worker runs it on its Ray Data shard.

Failure handling (Ray 2.60, Train V2):

* Every ``training.checkpoint_every_steps`` optimiser steps every rank writes its part of the DeepSpeed engine state
  (``engine.save_checkpoint``: rank 0 the module/scheduler state, each rank its own ZeRO optimiser (and, for ZeRO-3,
  parameter) shard) into its own temp folder and calls ``ray.train.report(checkpoint=...)`` with the same folder name.
  Train V2 syncs that name across ranks and merges every rank's files into ONE checkpoint folder in the run's storage,
  registered once all ranks have reported. So every shard is persisted, even with ZeRO-2/3 across several nodes
  (multi-node needs storage every node sees: NFS or an object store).
* A worker dying (``FailureConfig(max_failures=training.max_failures)``) makes the controller restart the whole worker
  group; each new worker gets ``ray.train.get_checkpoint()`` (the latest registered checkpoint), loads its shard with
  ``engine.load_checkpoint``, restores the step counters and skips the micro-batches already consumed in the current
  epoch. The shard order is the same in every attempt (seeded permutation in the driver, ``preserve_order`` ingest), so
  the run ends after exactly the planned number of optimiser steps (``micro_step_plan``).
* The run ends with rank 0's plain HF export, reported with ``final=True``: that is ``result.checkpoint``.
* ``ray.train.report`` is called only with a checkpoint (mid-run or final): per-step metrics go to the metrics sinks
  (TensorBoard, MLflow, W&B) from rank 0, and a progress line is printed every ``training.log_every_steps``.
* The whole driver dying: re-running ``tinyllm-ray train`` with unchanged settings reuses the same
  ``RunConfig(name, storage_path)`` (the name carries the config fingerprint), and Train V2 restores that run's
  checkpoint list from storage, so training resumes from its latest checkpoint (or, when the final export had already
  been registered, finishes at once with it). ``--force`` deletes that run's storage and trains from scratch.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tinyllm_ray.errors import TinyLLMError
from tinyllm_ray.config import JobConfig, stable_hash
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.schemas import RATIONALE_SCHEMA, ArtifactError, read_manifest, read_table, write_manifest

log = logging.getLogger("tinyllm_ray")


# Written into every checkpoint this loop reports: what it holds and how far training had got.
STATE_FILE = "tinyllm_train_state.json"
DEEPSPEED_TAG = "deepspeed"  # DeepSpeed's tag sub-folder inside a mid-run checkpoint
# Micro-batches taken from the Ray Data shard per pull. A small student (tiny model, 2 cores, ~30 ms steps) lost
# measurable time to Ray Data's threads waking for every micro-batch; 8 at a time costs a few rows of memory.
PULL_MICRO_BATCHES = 8
# Training settings that change how a run is carried out, not what it trains: not part of the student fingerprint
# (so changing them reuses the student, or resumes the same Ray Train run). length_groups changes only how the same
# loss is batched (float rounding).
OPERATIONAL_SETTINGS = {"log_every_steps", "checkpoint_every_steps", "max_failures", "custom_resources_per_worker",
                        "placement_strategy", "length_groups", "allocator"}


class TrainingError(TinyLLMError, RuntimeError):
    """Training could not start or finish; the message says which input or setting to fix."""


def _load_model(model_path: str, seq2seq: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    return cls.from_pretrained(model_path, dtype=torch.float32)


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """One Ray Train worker: build the student under DeepSpeed (resuming from the run's latest checkpoint if any),
    stream its shard, checkpoint every N steps, export HF weights on rank 0."""
    import deepspeed
    import ray.train
    import torch
    from transformers import AutoTokenizer

    from tinyllm_ray.losses import multi_task_loss, per_sequence_loss
    from tinyllm_ray.runtime import allocator_in_use
    from tinyllm_ray.training_data import Collator, Task, micro_batches

    resume = _read_resume_state(ray.train.get_checkpoint())
    if resume is not None and resume["kind"] == "final":
        # A previous attempt (or driver) already registered the final export: it stays the run's result.
        return
    # DeepSpeed would otherwise JIT-compile a shared-memory op (~100 s on CPU) that training never uses.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # Adopt the process group Ray Train created, so ZeRO-3's partitioned loading sees the real world size.
    deepspeed.init_distributed()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    worker_nodes = _gather_node_ids()
    allocator = allocator_in_use()
    ds_config = cfg["deepspeed"]
    accumulation = ds_config["gradient_accumulation_steps"]
    seq2seq = cfg["seq2seq"]
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_path"])
    if ds_config["zero_optimization"]["stage"] == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds_config)  # noqa: F841 - partitions weights while they load
    torch.manual_seed(cfg["seed"] + rank)
    model = _load_model(cfg["model_path"], seq2seq)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    warmup = cfg["warmup_steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    skip_single_rank_collectives(engine)
    micro_steps, tokens, seconds_before = 0, 0, 0.0
    resumed_from = None
    if resume is not None:
        _load_engine(engine, resume)
        micro_steps, tokens = resume["micro_steps"], resume["train_tokens"]
        seconds_before, resumed_from = resume["train_seconds"], resume["step"]
        # A fresh, reproducible random stream for the rest of the run (dropout etc.).
        torch.manual_seed(cfg["seed"] + rank + 1_000_003 * resumed_from)
        if rank == 0:
            log.info(f"[train] resumed from step {resumed_from}/{cfg['total_optimizer_steps']} "
                     f"({micro_steps} micro steps done)")
    start_epoch, skip = resume_position(micro_steps, cfg["micro_steps_per_epoch"])
    tasks = [Task(**t) for t in cfg["tasks"]]
    weights = torch.tensor([t.weight for t in tasks])
    collate = Collator(tokenizer, tasks, seq2seq, cfg["max_input_tokens"], cfg["max_target_tokens"])
    shard = ray.train.get_dataset_shard("train")
    started = time.time()

    def progress(step: int, epoch: int) -> dict[str, Any]:
        return {"step": step, "epoch": epoch, "micro_steps": micro_steps, "train_tokens": tokens,
                "train_seconds": seconds_before + time.time() - started, "resumed_from_step": resumed_from,
                "worker_nodes": worker_nodes, "worker_allocator": allocator}

    sinks = _open_rank0_sinks(cfg) if rank == 0 else None

    for epoch in range(start_epoch, cfg["epochs"]):
        if micro_steps >= cfg["total_micro_steps"]:
            break
        # Pulled several micro-batches at a time: Ray Data wakes its prefetch and formatting threads for every batch
        # it hands out, and each wake-up can preempt this thread (see PULL_MICRO_BATCHES).
        micro = ds_config["train_micro_batch_size_per_gpu"]
        pulls = shard.iter_batches(batch_size=micro * PULL_MICRO_BATCHES, batch_format="numpy", drop_last=False)
        for index, raw in enumerate(micro_batches(pulls, micro)):
            if index >= cfg["micro_steps_per_epoch"] or micro_steps >= cfg["total_micro_steps"]:
                break  # every rank must take the same number of steps or ZeRO's collectives hang
            if epoch == start_epoch and index < skip:
                continue  # consumed before the checkpoint this attempt resumed from
            # Sequences of similar length share a forward pass; the loss is still one mean over all of them.
            seq_losses, task_ids = [], []
            for group in collate.grouped({k: list(v) for k, v in raw.items()}, cfg["length_groups"]):
                batch = {k: v.to(engine.device) for k, v in group.items()}
                seq_losses.append(per_sequence_loss(_logits(engine, batch, seq2seq), batch["labels"],
                                                    shift=not seq2seq))
                task_ids.append(batch["task_ids"])
                tokens += int(batch["attention_mask"].sum())
            loss, per_task = multi_task_loss(torch.cat(seq_losses), torch.cat(task_ids), weights)
            engine.backward(loss)
            engine.step()
            micro_steps += 1
            if micro_steps % accumulation:
                continue
            step = micro_steps // accumulation
            loss_value = float(loss.detach())
            metrics = {**progress(step, epoch), "loss": loss_value,
                       "tokens_per_s": tokens / max(seconds_before + time.time() - started, 1e-9)}
            metrics.update({f"loss/{tasks[t].name}": float(v) for t, v in per_task.items()})
            if sinks is not None:
                sinks.log({**metrics, "learning_rate": scheduler.get_last_lr()[0]}, step=step)
            # ray.train.report() is a barrier across ranks (~0.15 s here, longer across nodes), so it is called only
            # with a checkpoint and the final export; the sinks above and the progress line below need no barrier.
            if checkpoint_due(step, cfg["checkpoint_every_steps"], cfg["total_optimizer_steps"]):
                _save_checkpoint(engine, rank, metrics, progress(step, epoch))
            if rank == 0 and step % cfg["log_every_steps"] == 0:
                # Logged, not printed: Ray Train 2.60 both logs and echoes a worker's print(), so it showed twice.
                log.info(f"[train] step {step}/{cfg['total_optimizer_steps']} loss {loss_value:.4f} "
                         + " ".join(f"{tasks[t].name}={float(v):.3f}" for t, v in per_task.items()))
    if sinks is not None:
        sinks.close()
    final = progress(micro_steps // accumulation, max(micro_steps - 1, 0) // cfg["micro_steps_per_epoch"])
    _export(engine, tokenizer, rank, final)


def skip_single_rank_collectives(engine) -> bool:
    """Switch off DeepSpeed's collectives where they are identities: ZeRO-0, one data-parallel rank, and the client
    torch optimizer unwrapped (fp32). Returns whether it did.

    DeepSpeed still "all-reduces" every step with one rank:

    * the gradients: it flattens every gradient into a new buffer the size of the model, scales it by 1/1, runs a
      one-rank collective and copies it back into each ``.grad`` (SmolLM2-135M on a 2-core CPU: ~0.6 s a step, ~130k
      page faults from the fresh 540 MB buffer). With one rank its only other effect goes too: DeepSpeed zero-fills
      the ``.grad`` of parameters the step did not reach, which AdamW would then decay; they now keep ``None`` and
      AdamW skips them, as in a plain PyTorch loop.
    * the gradient norm for clipping, averaged over the data-parallel group: a gloo collective per step, which
      hands the tensor to the process group's thread and waits for it. :func:`_clip_gradients` does the same
      arithmetic without it (tiny student, 2 cores: ~0.3 ms, ~1 % of a step, interleaved in one worker).

    ZeRO-1/2/3 and the fp16/bf16 optimizer wrappers keep both: their partition / master-gradient bookkeeping runs in
    those calls, and their clipping is their own.
    """
    from deepspeed.runtime.base_optimizer import DeepSpeedOptimizer

    if (engine.zero_optimization_stage() == 0 and getattr(engine, "dp_world_size", None) == 1
            and getattr(engine, "seq_dp_world_size", 1) == 1 and getattr(engine, "mp_world_size", 1) == 1
            and not isinstance(engine.optimizer, DeepSpeedOptimizer)):
        engine.enable_backward_allreduce = False
        engine.clip_fp32_gradients = functools.partial(_clip_gradients, engine)
        return True
    return False


def _clip_gradients(engine) -> None:
    """DeepSpeed's fp32 clipping (``runtime.utils.clip_grad_norm_``, L2 norm) for one rank: the same arithmetic in
    the same order, without the all-reduce, so training stays bit-identical."""
    import torch

    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    if not grads:
        return
    total_norm = torch.stack([g.detach().float().norm(2.0) for g in grads]).pow(2.0).sum().float().pow(1.0 / 2.0)
    device = total_norm.device  # the gradients' (a GPU worker's too)
    clip_coef = torch.tensor([float(engine.gradient_clipping())], device=device) / (total_norm + 1e-6)
    clip_coef = torch.min(torch.tensor([1.0], device=device), clip_coef)
    for grad in grads:
        grad.mul_(clip_coef)


def _logits(engine, batch: dict[str, Any], seq2seq: bool):
    if seq2seq:
        decoder_inputs = engine.module.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        return engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      decoder_input_ids=decoder_inputs).logits
    return engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _gather_node_ids() -> list[str]:
    """The Ray node of every rank, in rank order (recorded in the student manifest: where training ran)."""
    import ray
    import torch.distributed as dist

    node = ray.get_runtime_context().get_node_id()
    if not dist.is_initialized():
        return [node]
    nodes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return nodes


def _open_rank0_sinks(cfg: dict[str, Any]):
    from tinyllm_ray.config import MetricsConfig
    from tinyllm_ray.metrics import open_sinks

    params = {"model_path": cfg["model_path"], "learning_rate": cfg["learning_rate"],
              **{f"weight/{t['name']}": t["weight"] for t in cfg["tasks"]}}
    return open_sinks(MetricsConfig.model_validate(cfg["metrics"]), Path(cfg["metrics_dir"]), cfg["experiment"],
                      cfg["metrics_run"], params)


def resume_position(micro_steps_done: int, micro_steps_per_epoch: int) -> tuple[int, int]:
    """(epoch to continue in, micro-batches of that epoch's shard already consumed) after ``micro_steps_done``."""
    if micro_steps_per_epoch <= 0:
        raise ValueError("micro_steps_per_epoch must be positive")
    return divmod(max(micro_steps_done, 0), micro_steps_per_epoch)


def checkpoint_due(step: int, every: int | None, total_steps: int) -> bool:
    """Save a resumable checkpoint after this optimiser step? Never at the last one: the final export follows."""
    return bool(every) and step % every == 0 and step < total_steps


def _read_resume_state(checkpoint) -> dict[str, Any] | None:
    """The state file of the checkpoint Ray Train handed this attempt (None: fresh start), with its location.

    Read straight from the checkpoint's filesystem: no download of the (large) engine state just to look at it.
    """
    if checkpoint is None:
        return None
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{STATE_FILE}") as stream:
            state = json.loads(stream.read().decode())
    except FileNotFoundError:
        raise TrainingError(f"checkpoint {checkpoint.path} was not written by tinyllm_ray (no {STATE_FILE}); "
                            "delete the run's Ray Train storage folder or train with --force") from None
    state["checkpoint"] = checkpoint
    return state


def _load_engine(engine, state: dict[str, Any]) -> None:
    """Every rank loads its own shard (and rank 0's module/scheduler state) from the merged checkpoint folder."""
    with state["checkpoint"].as_directory() as folder:
        path, _ = engine.load_checkpoint(folder, tag=state["tag"], load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
    if path is None:
        raise TrainingError(f"could not load the DeepSpeed checkpoint in {state['checkpoint'].path}")
    expected = state["micro_steps"] // engine.gradient_accumulation_steps()
    if engine.global_steps != expected:
        raise TrainingError(f"checkpoint {state['checkpoint'].path} holds step {engine.global_steps}, "
                            f"its {STATE_FILE} says {expected}")


def _save_checkpoint(engine, rank: int, metrics: dict[str, Any], progress: dict[str, Any]) -> None:
    """Every rank saves its part of the engine state into its own folder; Ray merges them into one checkpoint."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="tinyllm-ckpt-") as folder:
        engine.save_checkpoint(folder, tag=DEEPSPEED_TAG)  # collective: every rank must call it
        if rank == 0:
            (Path(folder) / STATE_FILE).write_text(json.dumps({"kind": "deepspeed", "tag": DEEPSPEED_TAG,
                                                               **progress}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=f"step_{progress['step']:08d}")


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
            (Path(folder) / STATE_FILE).write_text(json.dumps({"kind": "final", **metrics}))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({**metrics, "final": True}, checkpoint=checkpoint)


def load_rationales(layout: RunLayout, teacher: str):
    """The columns of a teacher's rationales that training reads (not the prompts, most of the bytes)."""
    from tinyllm_ray.training_data import RATIONALE_COLUMNS

    directory = layout.teacher_dir(teacher)
    if read_manifest(directory) is None:
        raise ArtifactError(f"rationales for teacher {teacher!r} are missing or incomplete at {directory}: "
                            "run `tinyllm-ray generate` first")
    return read_table(directory, RATIONALE_SCHEMA, columns=list(RATIONALE_COLUMNS))


def train(config: JobConfig, force: bool = False, layout: RunLayout | None = None) -> dict[str, Any]:
    """The `train` stage; reuses an existing student whose inputs and settings are unchanged.

    ``layout`` puts the student elsewhere than ``output_dir`` (a sweep trial's folder); rationales stay shared.
    """
    import numpy as np
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tinyllm_ray.deepspeed_config import build_deepspeed_config, slow_setting_warnings
    from tinyllm_ray.problems import load_frozen_problems
    from tinyllm_ray.models import is_encoder_decoder, resolve_model
    from tinyllm_ray.runtime import allocator_env, connect
    from tinyllm_ray.training_data import build_training_table, take_fraction, tasks_for

    layout = layout or RunLayout.of(config.output_dir)
    problems = load_frozen_problems(layout, "train")
    teachers = config.distilled_teachers()
    rationales = {t.name: load_rationales(layout, t.name) for t in teachers}
    inputs = {t.name: read_manifest(layout.teacher_dir(t.name))["fingerprint"] for t in teachers}
    fingerprint = stable_hash({"student": config.student.model_dump(mode="json"),
                               "training": trained_settings(config.training),
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
    problems = take_fraction(problems, config.training.data_fraction, config.training.seed)
    table, rationale_counts = build_training_table(problems, rationales, config.training.rationale_filter)
    for name, counts in rationale_counts.items():
        if counts["usable"] == 0:
            log.warning("teacher %s: no usable rationale after training.rationale_filter (%s); only the answer "
                        "task and the other teachers train", name, counts)
    training = config.training
    for warning in slow_setting_warnings(training):
        log.warning(warning)
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
        "checkpoint_every_steps": training.checkpoint_every_steps,
        "max_input_tokens": config.student.max_input_tokens, "max_target_tokens": config.student.max_target_tokens,
        "length_groups": training.length_groups,
        "metrics": config.metrics.model_dump(mode="json"), "metrics_dir": str(layout.metrics / "train"),
        "experiment": config.name, "run_name": f"{config.name}-{fingerprint}",
        # MLflow / W&B run: the job, or the sweep trial (its folder name) with the job
        "metrics_run": config.name if layout.work == layout.root else f"{config.name}-{layout.work.name}",
    }
    connect(config)
    resources = {"CPU": training.cpus_per_worker, **training.custom_resources_per_worker}
    if training.use_gpu:
        resources["GPU"] = 1
    run_name = loop_config["run_name"]
    if force and (layout.train_storage / run_name).exists():
        # Same settings, but a retrain was asked for: Train V2 would otherwise resume (or reuse) the stored run.
        shutil.rmtree(layout.train_storage / run_name)
    # Shuffled once here with a seeded permutation and ingested in order: every attempt of the run (after a worker
    # failure, or a re-run after the driver died) streams the same rows to the same rank, so resuming can skip
    # exactly the micro-batches a checkpoint already covers.
    order = np.random.default_rng(training.seed).permutation(table.num_rows)
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=world, use_gpu=training.use_gpu, resources_per_worker=resources,
                                     placement_strategy=training.placement_strategy),
        datasets={"train": ray.data.from_arrow(table.take(order))},
        dataset_config=DataConfig(execution_options=ingest),
        run_config=RunConfig(name=run_name, storage_path=str(layout.train_storage),
                             failure_config=FailureConfig(max_failures=training.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             # DeveloperAPI in Ray 2.60; merged with the job's runtime env
                             worker_runtime_env={"env_vars": allocator_env(training.allocator, training.use_gpu)}),
    )
    start = time.time()
    result = trainer.fit()
    if result.error:
        raise TrainingError(f"training failed: {result.error}")
    checkpoint, metrics = final_export(result)
    staging = layout.root / f".student.staging-{uuid.uuid4().hex[:8]}"
    with checkpoint.as_directory() as folder:
        shutil.copytree(folder, staging)
    if layout.student.exists():
        shutil.rmtree(layout.student)
    staging.rename(layout.student)
    return write_manifest(
        layout.student, fingerprint=fingerprint, model=config.student.model, model_path=model_path, seq2seq=seq2seq,
        teachers=[t.name for t in teachers], alpha={t.name: config.alpha_for(t.name) for t in teachers},
        rationales=rationale_counts, training_problems=table.num_rows, optimizer_steps=metrics.get("step"),
        train_tokens=metrics.get("train_tokens"), seconds=round(time.time() - start, 2),
        resumed_from_step=metrics.get("resumed_from_step"), worker_nodes=metrics.get("worker_nodes"),
        worker_allocator=metrics.get("worker_allocator"), deepspeed=loop_config["deepspeed"])


def final_export(result) -> tuple[Any, dict[str, Any]]:
    """The run's final HF export (reported with ``final=True``), never a mid-run DeepSpeed checkpoint."""
    candidates = [(result.checkpoint, result.metrics)] + list(reversed(result.best_checkpoints or []))
    for checkpoint, metrics in candidates:
        if checkpoint is not None and (metrics or {}).get("final"):
            return checkpoint, dict(metrics)
    raise TrainingError("training finished without exporting the student checkpoint")


def trained_settings(training) -> dict[str, Any]:
    """The training settings the student fingerprint covers: operational ones left out, the ZeRO stage as it runs
    (``auto`` and the stage it picks train the same student, so neither retrains the other's)."""
    return {**training.model_dump(mode="json", exclude=OPERATIONAL_SETTINGS),
            "zero_stage": training.resolved_zero_stage}


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
