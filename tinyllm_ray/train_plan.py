"""Training, planned before any worker starts: the worker contract, the step plan, resume arithmetic, the student
fingerprint and the state file every checkpoint carries. Pure: no Ray, torch or DeepSpeed (tested on plain data).

The driver (:mod:`tinyllm_ray.train`) builds one :class:`WorkerSpec`; Ray ships it to every worker
(:mod:`tinyllm_ray.train_worker`), which trains its rank by it and writes :data:`STATE_FILE` into each checkpoint.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tinyllm_ray.config import JobConfig, MetricsConfig, TrainingConfig, fingerprint_view, stable_hash
from tinyllm_ray.errors import TinyLLMError
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.training_data import Task, tasks_for
from tinyllm_ray.training_tokens import Tokenisation


class TrainingError(TinyLLMError, RuntimeError):
    """Training could not start or finish; the message says which input or setting to fix."""


# ---------------------------------------------------------------- the worker contract

@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """Everything a Ray Train worker needs to train its rank, built once by the driver (:func:`worker_spec`) and
    read-only on the workers. Ray pickles it to each of them: plain values only, no open handles."""

    model_path: str
    """Local HF folder with the student's initial weights and tokenizer; every worker loads it."""
    seq2seq: bool
    """An encoder-decoder student (T5): targets feed the decoder instead of following the prompt."""
    tasks: tuple[Task, ...]
    """Task 0 is the answer, task m teacher m's rationales: prefix, training-table column and loss weight each."""
    deepspeed: Mapping[str, Any]
    """The DeepSpeed config (``deepspeed_config.build_deepspeed_config``): ZeRO stage, batch sizes, precision."""
    learning_rate: float
    """Peak learning rate of torch's AdamW."""
    weight_decay: float
    """AdamW's decoupled weight decay."""
    warmup_steps: int
    """Optimiser steps of linear warm-up to ``learning_rate``, which then stays constant."""
    seed: int
    """Rank r seeds torch with ``seed + r`` (weights initialised before loading, dropout)."""
    epochs: int
    """Passes over the shard; the plan below may end training earlier."""
    micro_steps_per_epoch: int
    """Micro-batches every rank trains on per epoch (:func:`micro_step_plan`): the same on every rank."""
    total_micro_steps: int
    """Micro-batches every rank trains on in the whole run: whole accumulation windows, at most all epochs."""
    length_groups: int
    """Forward passes per micro-batch, its sequences grouped by length; one loss over all of them."""
    log_every_steps: int
    """Rank 0 logs a progress line, and records the step in the loss log, every N optimiser steps."""
    checkpoint_every_steps: int | None
    """Every rank saves a resumable DeepSpeed checkpoint every N optimiser steps (None: the final export only)."""
    metrics: MetricsConfig
    """Which metrics sinks rank 0 opens (TensorBoard, MLflow, W&B)."""
    metrics_dir: str
    """Folder of the TensorBoard event files."""
    experiment: str
    """MLflow experiment / W&B project: the job name."""
    metrics_run: str
    """MLflow / W&B run name: the job, or a sweep trial of it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "deepspeed", copy.deepcopy(dict(self.deepspeed)))  # the caller's dict stays its own
        problems = []
        if not self.tasks or not all(isinstance(t, Task) for t in self.tasks):
            problems.append("tasks must be one or more training_data.Task")
        elif len({t.name for t in self.tasks}) != len(self.tasks):
            problems.append(f"task names repeat: {[t.name for t in self.tasks]}")
        elif any(t.weight < 0 for t in self.tasks):
            problems.append("task weights must be >= 0")
        try:
            micro, accumulation = self.micro_batch_size, self.accumulation
            stage = self.zero_stage
        except (KeyError, TypeError):
            problems.append("deepspeed needs train_micro_batch_size_per_gpu, gradient_accumulation_steps and "
                            "zero_optimization.stage")
        else:
            if micro < 1 or accumulation < 1 or stage not in (0, 1, 2, 3):
                problems.append(f"deepspeed micro batch {micro}, accumulation {accumulation}, stage {stage}")
            elif self.micro_steps_per_epoch < 1 or self.micro_steps_per_epoch % accumulation:
                problems.append(f"micro_steps_per_epoch {self.micro_steps_per_epoch} is not a positive multiple of "
                                f"gradient_accumulation_steps {accumulation}")
            elif not 0 < self.total_micro_steps <= self.epochs * self.micro_steps_per_epoch:
                problems.append(f"total_micro_steps {self.total_micro_steps} is not within 1..epochs x "
                                f"micro_steps_per_epoch ({self.epochs} x {self.micro_steps_per_epoch})")
            elif self.total_micro_steps % accumulation:
                problems.append(f"total_micro_steps {self.total_micro_steps} ends inside an accumulation window")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.epochs < 1:
            problems.append("learning_rate must be > 0, weight_decay and warmup_steps >= 0, epochs >= 1")
        if self.length_groups < 1:
            problems.append("length_groups >= 1 is needed")
        if self.log_every_steps < 1 or (self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1):
            problems.append("log_every_steps and checkpoint_every_steps must be >= 1")
        if problems:
            raise ValueError("inconsistent WorkerSpec: " + "; ".join(problems))

    @property
    def micro_batch_size(self) -> int:
        return int(self.deepspeed["train_micro_batch_size_per_gpu"])

    @property
    def accumulation(self) -> int:
        return int(self.deepspeed["gradient_accumulation_steps"])

    @property
    def zero_stage(self) -> int:
        return int(self.deepspeed["zero_optimization"]["stage"])

    @property
    def total_optimizer_steps(self) -> int:
        return self.total_micro_steps // self.accumulation


def worker_spec(config: JobConfig, layout: RunLayout, model_path: str, seq2seq: bool,
                training_rows: int) -> WorkerSpec:
    """The spec of ``config``'s student, trained on ``training_rows`` rows, with its metrics under ``layout``."""
    from tinyllm_ray.deepspeed_config import build_deepspeed_config, run_length_groups

    training = config.training
    per_epoch, total = micro_step_plan(training_rows, training)
    return WorkerSpec(
        model_path=model_path, seq2seq=seq2seq, tasks=tokenisation(config, model_path).tasks,
        deepspeed=build_deepspeed_config(training, training.num_workers),
        learning_rate=training.learning_rate, weight_decay=training.weight_decay, warmup_steps=training.warmup_steps,
        seed=training.seed, epochs=training.epochs, micro_steps_per_epoch=per_epoch, total_micro_steps=total,
        length_groups=run_length_groups(training), log_every_steps=training.log_every_steps,
        checkpoint_every_steps=training.checkpoint_every_steps, metrics=config.metrics,
        metrics_dir=str(layout.metrics / "train"), experiment=config.name,
        # MLflow / W&B run: the job, or the sweep trial (its folder name) with the job
        metrics_run=config.name if layout.work == layout.root else f"{config.name}-{layout.work.name}")


def tokenisation(config: JobConfig, model_path: str) -> Tokenisation:
    """How the training set of ``config``'s student is tokenised (where it is built): the student's tokenizer, the
    tasks (the answer, then each distilled teacher with its rationale prefix and alpha) and the student's limits."""
    teachers = config.distilled_teachers()
    tasks = tasks_for(config.prompts.task_prefix, config.training.answer_weight,
                      [(t.name, t.rationale_prefix, config.alpha_for(t.name)) for t in teachers])
    return Tokenisation(model_path=model_path, tasks=tuple(tasks), max_input_tokens=config.student.max_input_tokens,
                        max_target_tokens=config.student.max_target_tokens)


# ---------------------------------------------------------------- the plan

def micro_step_plan(rows: int, training: TrainingConfig) -> tuple[int, int]:
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


def resume_position(micro_steps_done: int, micro_steps_per_epoch: int) -> tuple[int, int]:
    """(epoch to continue in, micro-batches of that epoch's shard already consumed) after ``micro_steps_done``."""
    if micro_steps_per_epoch <= 0:
        raise ValueError("micro_steps_per_epoch must be positive")
    return divmod(max(micro_steps_done, 0), micro_steps_per_epoch)


def checkpoint_due(step: int, every: int | None, total_steps: int) -> bool:
    """Save a resumable checkpoint after this optimiser step? Never at the last one: the final export follows."""
    return bool(every) and step % every == 0 and step < total_steps


# ---------------------------------------------------------------- the student fingerprint

def trained_settings(training: TrainingConfig) -> dict[str, Any]:
    """The training settings the student fingerprint covers: every field but those marked operational in
    :mod:`tinyllm_ray.config`, and the ZeRO stage as it runs (``auto`` and the stage it picks train the same student,
    so neither retrains the other's)."""
    return {**fingerprint_view(training, skip=("operational",)), "zero_stage": training.resolved_zero_stage}


def student_fingerprint(config: JobConfig, rationale_fingerprints: Mapping[str, str], problems_fingerprint: str) -> str:
    """What the student depends on: its own settings, the trained settings, the task and rationale prefixes and the
    fingerprints of the problems and of each distilled teacher's rationales."""
    teachers = config.distilled_teachers()
    return stable_hash({"student": fingerprint_view(config.student, skip=("operational",)),
                        "training": trained_settings(config.training), "task_prefix": config.prompts.task_prefix,
                        "rationales": dict(rationale_fingerprints),
                        "prefixes": {t.name: t.rationale_prefix for t in teachers},
                        "problems": problems_fingerprint})


# ---------------------------------------------------------------- what a checkpoint says about itself

STATE_FILE = "tinyllm_train_state.json"  # in every checkpoint the loop reports, and so in the student folder
DEEPSPEED_TAG = "deepspeed"  # DeepSpeed's tag sub-folder inside a mid-run checkpoint
MID_RUN, FINAL = "deepspeed", "final"  # the state file's "kind": a resumable engine state, or the HF export


def rng_file(rank: int) -> str:
    """Rank ``rank``'s torch random state inside a mid-run checkpoint (each rank writes its own)."""
    return f"tinyllm_rng_rank{rank:05d}.pt"


@dataclass(frozen=True)
class Progress:
    """How far a run had got: the counters a checkpoint restores and the facts the student manifest records."""

    step: int
    """Optimiser steps done."""
    epoch: int
    """Epoch of the last micro-batch trained on."""
    micro_steps: int
    """Micro-batches each rank has trained on."""
    train_tokens: int
    """Non-pad tokens rank 0 has trained on."""
    train_seconds: float
    """Seconds spent in the training loop, over every attempt."""
    resumed_from_step: int | None
    """The step this attempt resumed from (None: a fresh start)."""
    worker_nodes: list[str]
    """The Ray node of every rank, in rank order."""
    worker_allocator: str
    """The memory allocator the workers ran with."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepRecord:
    """One optimiser step as a rank saw it: what :func:`train_worker.fit` hands its ``on_step`` callback."""

    step: int
    """Optimiser steps done, this one included."""
    epoch: int
    """Epoch of the step's last micro-batch."""
    loss: float
    """This rank's objective on the step's last micro-batch (the weighted sum over tasks)."""
    task_losses: Mapping[str, float]
    """This rank's per-task mean loss on that micro-batch, by task name (tasks present in it only)."""
    tokens: int
    """Non-pad tokens this rank computed on in the step (every micro-batch of the window)."""
    train_tokens: int
    """Non-pad tokens this rank has trained on in the run, this step included."""
    seconds: float
    """Wall seconds since the previous step ended (the first: since the loop started)."""
    finished_at: float
    """Wall-clock time (``time.time()``) at the end of the step."""

    def loss_entry(self) -> dict[str, Any]:
        """The step's entry in the run's loss log (:data:`STATE_FILE`'s ``loss_log``, the manifest's ``losses``)."""
        return {"step": self.step, "loss": self.loss, "task_losses": dict(self.task_losses)}


def checkpoint_state(progress: Progress, loss_log: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The state file of a mid-run checkpoint: its DeepSpeed tag, the counters to resume with, the loss log so far."""
    return {"kind": MID_RUN, "tag": DEEPSPEED_TAG, **progress.as_dict(), "loss_log": list(loss_log)}


def final_state(progress: Progress, loss_log: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The state file of the final HF export: where the run ended, and its whole loss log."""
    return {"kind": FINAL, **progress.as_dict(), "loss_log": list(loss_log)}


def write_state(folder: str | Path, state: Mapping[str, Any]) -> Path:
    path = Path(folder) / STATE_FILE
    path.write_text(json.dumps(dict(state)))
    return path


def parse_state(text: str, where: str) -> dict[str, Any]:
    """A state file's content, checked: its kind, and the counters a resume needs."""
    try:
        state = json.loads(text)
    except ValueError:
        raise TrainingError(f"{where}/{STATE_FILE} is not JSON: delete the run's Ray Train storage folder or train "
                            "with --force") from None
    missing = [key for key in ("kind", "step", "micro_steps", "train_tokens", "train_seconds") if key not in state]
    if state.get("kind") not in (MID_RUN, FINAL) or (state["kind"] == MID_RUN and "tag" not in state) or missing:
        raise TrainingError(f"{where}/{STATE_FILE} is not a tinyllm_ray training state (kind "
                            f"{state.get('kind')!r}, missing {missing}): delete the run's Ray Train storage folder "
                            "or train with --force")
    state.setdefault("loss_log", [])  # checkpoints written before the loss log existed
    return state


def read_state(folder: str | Path) -> dict[str, Any] | None:
    """The state file of a checkpoint or student folder (None when it has none)."""
    path = Path(folder) / STATE_FILE
    return parse_state(path.read_text(), str(folder)) if path.is_file() else None


def missing_state_error(where: str) -> TrainingError:
    return TrainingError(f"checkpoint {where} was not written by tinyllm_ray (no {STATE_FILE}); "
                         "delete the run's Ray Train storage folder or train with --force")
