"""The Ray Train worker: every rank runs ``setup -> fit -> export`` (:func:`default_loop`) on its Ray Data shard.

* :func:`setup` builds the student under DeepSpeed from the :class:`~tinyllm_ray.train_plan.WorkerSpec`, resumed from
  the checkpoint Ray Train hands this attempt (``ray.train.get_checkpoint()``: the run's latest registered one).
* :func:`fit` is the project's only training loop. Every ``checkpoint_every_steps`` optimiser steps every rank writes
  its part of the engine state (rank 0 the module and scheduler, each rank its ZeRO optimiser and, for ZeRO-3,
  parameter shard, and its random state) into the checkpoint's folder in the run's storage and reports it under one
  folder name (:mod:`tinyllm_ray.checkpoint_storage`); Train V2 registers that ONE checkpoint once all ranks
  reported, so every shard is persisted (across nodes too, given storage every node sees). A failed worker group
  restarts (``FailureConfig``) and the new workers resume: same shard order in every attempt (a seeded order of
  the ids, :mod:`tinyllm_ray.training_stream`, and ``preserve_order`` ingest), so they skip exactly the
  micro-batches already trained on and the run takes exactly the planned steps.
* :func:`export` reports rank 0's plain HF folder with ``final=True``: the run's result.

``ray.train.report`` is a barrier across ranks, so it is called only with a checkpoint or the export; per-step metrics
go to rank 0's sinks and progress lines. Heavy imports (torch, deepspeed, transformers) stay inside the functions.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyllm_ray.progress_channel import publish
from tinyllm_ray.train_plan import (DEEPSPEED_TAG, FINAL, STATE_FILE, Progress, StepRecord, TrainingError, WorkerSpec,
                                    checkpoint_due, checkpoint_state, final_state, missing_state_error, parse_state,
                                    resume_position, rng_file, write_state)

log = logging.getLogger("tinyllm_ray")

PULL_MICRO_BATCHES = 8  # micro-batches per shard pull: each pull wakes Ray Data threads (benchmarks/RESULTS.md)
RESEED = 1_000_003  # a checkpoint without saved random states: rank r resumed at step s seeds seed + r + RESEED * s


def default_loop(spec: WorkerSpec) -> None:
    """What every worker runs unless ``train(config, loop=...)`` says otherwise."""
    state = setup(spec)
    if state is None:
        return  # the final export is already registered (a re-run after the driver died): it stays the result
    fit(state)
    export(state)


@dataclass
class WorkerState:
    """One rank's training: what :func:`setup` built, and the counters :func:`fit` advances."""

    spec: WorkerSpec
    engine: Any  # deepspeed.DeepSpeedEngine wrapping the student
    scheduler: Any  # the engine's learning-rate scheduler (torch LambdaLR)
    tokenizer: Any
    collator: Any  # training_tokens.Collator: pads and stacks the stream's token ids
    shard: Any  # this rank's ray.data.DataIterator of the training table
    task_weights: Any  # torch tensor: loss weight per task id
    rank: int
    worker_nodes: list[str]  # the Ray node of every rank, in rank order
    allocator: str  # the memory allocator this process runs with
    micro_steps: int = 0
    train_tokens: int = 0
    seconds_before: float = 0.0  # training seconds of earlier attempts
    resumed_from: int | None = None  # the step this attempt resumed from
    loss_log: list[dict[str, Any]] = field(default_factory=list)  # rank 0's logged steps (StepRecord.loss_entry)
    started: float = field(default_factory=time.time)
    keep_alive: Any = None  # ZeRO-3: transformers' HfDeepSpeedConfig, which must outlive the model it partitioned

    @property
    def step(self) -> int:
        return self.micro_steps // self.spec.accumulation

    def progress(self) -> Progress:
        return Progress(step=self.step, epoch=max(self.micro_steps - 1, 0) // self.spec.micro_steps_per_epoch,
                        micro_steps=self.micro_steps, train_tokens=self.train_tokens,
                        train_seconds=self.seconds_before + time.time() - self.started,
                        resumed_from_step=self.resumed_from, worker_nodes=self.worker_nodes,
                        worker_allocator=self.allocator)


def setup(spec: WorkerSpec) -> WorkerState | None:
    """This rank's student under DeepSpeed, resumed from the checkpoint Ray Train handed this attempt if any.
    None when that checkpoint is the run's final export: nothing is left to train."""
    import deepspeed
    import ray.train
    import torch
    from transformers import AutoTokenizer

    from tinyllm_ray.runtime import allocator_in_use
    from tinyllm_ray.training_tokens import Collator, with_pad_token

    resume = _read_resume_state(ray.train.get_checkpoint())
    if resume is not None and resume["kind"] == FINAL:
        return None
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # else DeepSpeed JIT-compiles an op it never uses
    deepspeed.init_distributed()  # adopt Ray Train's process group: ZeRO-3's partitioned loading sees the world size
    rank = ray.train.get_context().get_world_rank()
    worker_nodes = _gather_node_ids()
    ds_config = copy.deepcopy(dict(spec.deepspeed))  # DeepSpeed may write into the dict it is given
    tokenizer = with_pad_token(AutoTokenizer.from_pretrained(spec.model_path))  # exported with the student
    keep_alive = None
    if spec.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds_config)  # partitions the weights while they load
    torch.manual_seed(spec.seed + rank)
    model = _load_model(spec.model_path, spec.seq2seq)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
    warmup = spec.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    skip_single_rank_collectives(engine)
    state = WorkerState(spec=spec, engine=engine, scheduler=scheduler, tokenizer=tokenizer, collator=None, shard=None,
                        task_weights=torch.tensor([t.weight for t in spec.tasks]), rank=rank,
                        worker_nodes=worker_nodes, allocator=allocator_in_use(), keep_alive=keep_alive)
    if resume is not None:
        _restore(state, resume)
    state.collator = Collator(spec.tasks, spec.seq2seq, tokenizer.pad_token_id)
    state.shard = ray.train.get_dataset_shard("train")
    state.started = time.time()
    return state


def fit(state: WorkerState, on_step: Callable[[StepRecord], None] | None = None) -> None:
    """Train from where ``state`` stands to the end of the plan. ``on_step`` gets every optimiser step's
    :class:`StepRecord` on every rank, after that step's metrics, checkpoint and progress line."""
    spec = state.spec
    start_epoch, skip = resume_position(state.micro_steps, spec.micro_steps_per_epoch)
    sinks = _open_rank0_sinks(spec) if state.rank == 0 else None
    window_tokens, last_end = 0, time.time()
    try:
        for epoch in range(start_epoch, spec.epochs):
            if state.micro_steps >= spec.total_micro_steps:
                break
            for index, raw in enumerate(_micro_batches(state)):
                if index >= spec.micro_steps_per_epoch or state.micro_steps >= spec.total_micro_steps:
                    break  # every rank must take the same number of steps or ZeRO's collectives hang
                if epoch == start_epoch and index < skip:
                    continue  # trained on before the checkpoint this attempt resumed from
                loss, per_task, tokens = _loss_step(state, raw)
                state.engine.backward(loss)
                state.engine.step()  # DeepSpeed steps the optimiser at the end of each accumulation window only
                state.micro_steps += 1
                state.train_tokens += tokens
                window_tokens += tokens
                if state.micro_steps % spec.accumulation:
                    continue
                now = time.time()
                record = StepRecord(step=state.step, epoch=epoch, loss=float(loss.detach()),
                                    task_losses={spec.tasks[t].name: float(v) for t, v in per_task.items()},
                                    tokens=window_tokens, train_tokens=state.train_tokens, seconds=now - last_end,
                                    finished_at=now)
                _after_step(state, record, sinks)
                if on_step is not None:
                    on_step(record)
                window_tokens, last_end = 0, now
    finally:
        if sinks is not None:
            sinks.close()


def export(state: WorkerState) -> None:
    """Gather full weights (ZeRO-3 shards them) and report rank 0's plain HF folder as the run's final checkpoint,
    written where the run's storage keeps it (:mod:`tinyllm_ray.checkpoint_storage`)."""
    from tinyllm_ray.checkpoint_storage import checkpoint_folder, report_checkpoint

    engine, rank = state.engine, state.rank
    progress = state.progress()
    if engine.zero_optimization_partition_weights():
        weights = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank must call it
    else:
        weights = engine.module.state_dict() if rank == 0 else None
    metrics, name = {**progress.as_dict(), "final": True}, f"final_{progress.step:08d}"
    if rank != 0:
        report_checkpoint(metrics, name)
        return
    with checkpoint_folder(name) as (folder, mode):
        engine.module.save_pretrained(folder, state_dict=weights)
        state.tokenizer.save_pretrained(folder)
        write_state(folder, final_state(progress, state.loss_log))
        report_checkpoint(metrics, name, folder, mode)


# ---------------------------------------------------------------- one step

def _micro_batches(state: WorkerState) -> Iterator[dict[str, Any]]:
    """One epoch of this rank's shard in micro-batches, pulled several at a time (see PULL_MICRO_BATCHES)."""
    from tinyllm_ray.training_data import micro_batches

    micro = state.spec.micro_batch_size
    pulls = state.shard.iter_batches(batch_size=micro * PULL_MICRO_BATCHES, batch_format="numpy", drop_last=False)
    return micro_batches(pulls, micro)


def _loss_step(state: WorkerState, raw: Mapping[str, Any]):
    """(objective, per-task mean losses, non-pad tokens) of one micro-batch: its sequences grouped by length, one
    forward pass per group (short answers are not padded to rationale length), one mean loss over all of them."""
    import torch

    from tinyllm_ray.losses import multi_task_loss, per_sequence_loss

    engine, seq2seq = state.engine, state.spec.seq2seq
    seq_losses, task_ids, tokens = [], [], 0
    for group in state.collator.grouped(raw, state.spec.length_groups):
        batch = {k: v.to(engine.device) for k, v in group.items()}
        seq_losses.append(per_sequence_loss(_logits(engine, batch, seq2seq), batch["labels"], shift=not seq2seq))
        task_ids.append(batch["task_ids"])
        tokens += int(batch["attention_mask"].sum())
    loss, per_task = multi_task_loss(torch.cat(seq_losses), torch.cat(task_ids), state.task_weights)
    return loss, per_task, tokens


def _logits(engine, batch: dict[str, Any], seq2seq: bool):
    if seq2seq:
        decoder_inputs = engine.module.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        return engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      decoder_input_ids=decoder_inputs).logits
    return engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _after_step(state: WorkerState, record: StepRecord, sinks) -> None:
    """Metrics to rank 0's sinks, the loss log, a checkpoint when one is due, the progress line."""
    spec, step = state.spec, record.step
    progress = state.progress()
    metrics = {**progress.as_dict(), "loss": record.loss,
               "tokens_per_s": state.train_tokens / max(progress.train_seconds, 1e-9),
               **{f"loss/{name}": value for name, value in record.task_losses.items()}}
    if sinks is not None:
        sinks.log({**metrics, "learning_rate": state.scheduler.get_last_lr()[0]}, step=step)
    if state.rank == 0:  # the driver's progress display (at most one event a second)
        publish({"step": step, "total": spec.total_optimizer_steps, "loss": record.loss,
                 "task_losses": dict(record.task_losses), "tokens_per_s": metrics["tokens_per_s"]},
                final=step == spec.total_optimizer_steps)
    logged = state.rank == 0 and step % spec.log_every_steps == 0
    if logged:
        state.loss_log.append(record.loss_entry())  # before the checkpoint, which carries the log so far
    if checkpoint_due(step, spec.checkpoint_every_steps, spec.total_optimizer_steps):
        _save_checkpoint(state, metrics)
    if logged:
        # Logged, not printed: Ray Train 2.60 both logs and echoes a worker's print(), so it showed twice.
        log.info(f"[train] step {step}/{spec.total_optimizer_steps} loss {record.loss:.4f} "
                 + " ".join(f"{name}={value:.3f}" for name, value in record.task_losses.items()))


# ---------------------------------------------------------------- checkpoints

def _read_resume_state(checkpoint) -> dict[str, Any] | None:
    """The state file of the checkpoint Ray Train handed this attempt (None: fresh start), with the checkpoint.
    Read straight from the checkpoint's filesystem: no download of the (large) engine state just to look at it."""
    if checkpoint is None:
        return None
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{STATE_FILE}") as stream:
            text = stream.read().decode()
    except FileNotFoundError:
        raise missing_state_error(checkpoint.path) from None
    return {**parse_state(text, checkpoint.path), "checkpoint": checkpoint}


def _restore(state: WorkerState, resume: dict[str, Any]) -> None:
    """Every rank loads its shard (and rank 0's module and scheduler state) from the merged checkpoint, its random
    state, and the counters and loss log of the step the checkpoint was saved at."""
    import torch

    engine, checkpoint = state.engine, resume["checkpoint"]
    with checkpoint.as_directory() as folder:
        path, _ = engine.load_checkpoint(folder, tag=resume["tag"], load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        rng_path = Path(folder) / rng_file(state.rank)
        rng = torch.load(rng_path) if rng_path.is_file() else None
    if path is None:
        raise TrainingError(f"could not load the DeepSpeed checkpoint in {checkpoint.path}")
    expected = resume["micro_steps"] // engine.gradient_accumulation_steps()
    if engine.global_steps != expected:
        raise TrainingError(f"checkpoint {checkpoint.path} holds step {engine.global_steps}, "
                            f"its {STATE_FILE} says {expected}")
    state.micro_steps, state.train_tokens = resume["micro_steps"], resume["train_tokens"]
    state.seconds_before, state.resumed_from = resume["train_seconds"], resume["step"]
    state.loss_log = list(resume["loss_log"])
    if rng is not None:
        torch.set_rng_state(rng["cpu"])  # dropout continues exactly as in an uninterrupted run
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    else:
        torch.manual_seed(state.spec.seed + state.rank + RESEED * state.resumed_from)
    if state.rank == 0:
        log.info(f"[train] resumed from step {state.resumed_from}/{state.spec.total_optimizer_steps} "
                 f"({state.micro_steps} micro steps done)")


def _save_checkpoint(state: WorkerState, metrics: dict[str, Any]) -> None:
    """Every rank saves its part of the engine state and its random state into the checkpoint's one folder."""
    import torch

    from tinyllm_ray.checkpoint_storage import checkpoint_folder, report_checkpoint

    name = f"step_{state.step:08d}"
    with checkpoint_folder(name) as (folder, mode):
        torch.save({"cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   folder / rng_file(state.rank))
        state.engine.save_checkpoint(str(folder), tag=DEEPSPEED_TAG)  # collective: every rank must call it
        if state.rank == 0:
            write_state(folder, checkpoint_state(state.progress(), state.loss_log))
        report_checkpoint(metrics, name, folder, mode)


# ---------------------------------------------------------------- the engine and its surroundings

def _load_model(model_path: str, seq2seq: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    return cls.from_pretrained(model_path, dtype=torch.float32)


def skip_single_rank_collectives(engine) -> bool:
    """Switch off DeepSpeed's collectives where they are identities: ZeRO-0, one data-parallel rank, and the client
    torch optimizer unwrapped (fp32). Returns whether it did.

    With one rank DeepSpeed still all-reduces every step: the gradients (flattened into a fresh buffer the size of
    the model and copied back) and the clipping norm (a gloo round trip). Both are identities there; their cost is
    in benchmarks/RESULTS.md. The gradient reduction's only other effect goes too: DeepSpeed zero-fills the
    ``.grad`` of parameters a step did not reach, which AdamW would then decay; they keep ``None``, as in a plain
    PyTorch loop. :func:`_clip_gradients` does the clipping arithmetic without the collective.

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


def _open_rank0_sinks(spec: WorkerSpec):
    from tinyllm_ray.metrics import open_sinks

    params = {"model_path": spec.model_path, "learning_rate": spec.learning_rate,
              **{f"weight/{t.name}": t.weight for t in spec.tasks}}
    return open_sinks(spec.metrics, Path(spec.metrics_dir), spec.experiment, spec.metrics_run, params)
