"""Recipe: problems + rationales -> multi-task training set -> Ray Train workers running DeepSpeed ZeRO -> HF student.

``train(config)`` plans the run (:mod:`tinyllm_ray.train_plan`), gives every worker one
:class:`~tinyllm_ray.train_plan.WorkerSpec` and the loop to run with it (default
:func:`tinyllm_ray.train_worker.default_loop`: setup -> fit -> export), and moves the run's final export into the
student folder, manifest last; then it deletes the run's Ray Train storage (``runs/<job>/ray_train/<run>``: nothing
is left to resume) unless ``training.keep_checkpoints`` keeps it (the export is then copied).

A failed worker group restarts from its latest checkpoint (``training.max_failures``; :mod:`tinyllm_ray.train_worker`).
When the driver itself dies, re-running with unchanged settings reuses the same ``RunConfig(name, storage_path)`` (the
name carries the student fingerprint): Train V2 restores that run's checkpoints from storage, so training resumes from
the latest one, or finishes at once when the final export had been registered. ``--force`` deletes that run's storage
and trains from scratch. Checkpoints are written straight into that storage (:mod:`tinyllm_ray.checkpoint_storage`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Any

from tinyllm_ray.artifacts import reusable
from tinyllm_ray.config import JobConfig
from tinyllm_ray.console import current as console
from tinyllm_ray.layout import RunLayout
from tinyllm_ray.schemas import RATIONALE_SCHEMA, read_manifest, read_table, write_manifest
from tinyllm_ray.train_plan import (TrainingError, WorkerSpec, micro_step_plan, read_state, student_fingerprint,
                                    tokenisation, trained_settings, worker_spec)
from tinyllm_ray.train_worker import default_loop

__all__ = ["TrainingError", "WorkerSpec", "final_export", "load_rationales", "micro_step_plan", "train",
           "train_loop_per_worker", "trained_settings"]

log = logging.getLogger("tinyllm_ray")

# The default loop under its old name, for callers that patch or import it (benchmarks/) until they pass loop=.
train_loop_per_worker = default_loop


def train(config: JobConfig, force: bool = False, layout: RunLayout | None = None,
          loop: Callable[[WorkerSpec], None] | None = None) -> dict[str, Any]:
    """The `train` stage; reuses an existing student whose inputs and settings are unchanged.

    ``layout`` puts the student elsewhere than ``output_dir`` (a sweep trial's folder); rationales stay shared.
    ``loop`` is what every Ray Train worker runs with the run's spec (default: ``train_worker.default_loop``); one
    that reports no final export ends in a TrainingError once the workers are done.
    """
    from tinyllm_ray.checkpoint_storage import take_export
    from tinyllm_ray.cluster_fit import training_request
    from tinyllm_ray.cluster_state import require_fit
    from tinyllm_ray.deepspeed_config import slow_setting_warnings
    from tinyllm_ray.models import is_encoder_decoder, resolve_model
    from tinyllm_ray.runtime import connect
    from tinyllm_ray.training_stream import build_training_set, require_inputs

    layout = layout or RunLayout.of(config.output_dir)
    teachers = config.distilled_teachers()
    require_inputs(layout, [t.name for t in teachers])  # the fingerprint below reads their manifests
    fingerprint = student_fingerprint(
        config, {t.name: read_manifest(layout.teacher_dir(t.name))["fingerprint"] for t in teachers},
        read_manifest(layout.problems)["fingerprint"])
    existing = reusable(layout.student, fingerprint, force)
    if existing is not None:
        log.info("student: reusing %s", layout.student)
        console().stage_reused("train", f"student of unchanged settings: {layout.student}")
        return existing

    model_path = resolve_model(config.student.model)
    seq2seq = {"seq2seq": True, "decoder": False}.get(config.student.architecture)
    if seq2seq is None:
        seq2seq = is_encoder_decoder(model_path)
    training = config.training
    for warning in slow_setting_warnings(training, seq2seq):
        log.warning(warning)

    connect(config)
    require_fit([training_request(training)])  # a placement group no node can hold would wait forever
    run_name = f"{config.name}-{fingerprint}"
    if force and (layout.train_storage / run_name).exists():
        # Same settings, but a retrain was asked for: Train V2 would otherwise resume (or reuse) the stored run.
        shutil.rmtree(layout.train_storage / run_name)
    # Joined, filtered, tokenised and shuffled in Ray Data tasks (the driver keeps file names and counts, never the
    # split), in a seeded order of the ids, and ingested in order: every attempt of the run (after a worker failure, or a
    # re-run after the driver died) streams the same rows to the same rank, so resuming can skip exactly the
    # micro-batches a checkpoint already covers.
    set_folder = layout.train_storage / f"{run_name}.training_set"
    try:
        training_set = build_training_set(layout, [t.name for t in teachers], set_folder,
                                          tokenisation(config, model_path), training.data_fraction, training.seed,
                                          training.rationale_filter)
        result, spec, start = _fit(config, layout, training_set, model_path, seq2seq, run_name, loop)
    finally:  # derived from the inputs: a re-run builds the same set again
        shutil.rmtree(set_folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # only while empty
            layout.train_storage.rmdir()
    if result.error:
        raise TrainingError(f"training failed: {result.error}")
    checkpoint, metrics = final_export(result)
    staging = layout.root / f".student.staging-{uuid.uuid4().hex[:8]}"
    take_export(checkpoint, staging, keep=training.keep_checkpoints)
    if layout.student.exists():
        shutil.rmtree(layout.student)
    staging.rename(layout.student)
    final = read_state(layout.student) or {}
    manifest = write_manifest(
        layout.student, fingerprint=fingerprint, model=config.student.model, model_path=model_path, seq2seq=seq2seq,
        teachers=[t.name for t in teachers], alpha={t.name: config.alpha_for(t.name) for t in teachers},
        rationales=training_set.counts, training_problems=training_set.rows, optimizer_steps=metrics.get("step"),
        train_tokens=metrics.get("train_tokens"), seconds=round(time.time() - start, 2),
        resumed_from_step=metrics.get("resumed_from_step"), worker_nodes=metrics.get("worker_nodes"),
        worker_allocator=metrics.get("worker_allocator"), deepspeed=spec.deepspeed,
        # rank 0's loss every training.log_every_steps steps, as its progress lines print them
        losses=final.get("loss_log", []))
    if not training.keep_checkpoints:  # the student is complete: nothing is left to resume
        shutil.rmtree(layout.train_storage / run_name, ignore_errors=True)
        with contextlib.suppress(OSError):  # only while empty: no other run's storage goes with it
            layout.train_storage.rmdir()
    last = (manifest.get("losses") or [{}])[-1]
    console().stage_finished("train", f"{metrics.get('step')} steps, {metrics.get('train_tokens')} tokens"
                                      + (f", loss {last['loss']:.3f} at step {last['step']}" if "loss" in last else "")
                                      + f" -> {layout.student}")
    return manifest


def _fit(config: JobConfig, layout: RunLayout, training_set, model_path: str, seq2seq: bool, run_name: str,
         loop: Callable[[WorkerSpec], None] | None):
    """Ray Train workers fitting the student on the built set's stream: (the fit's result, the spec, its start)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tinyllm_ray.cluster_fit import worker_resources
    from tinyllm_ray.progress_channel import followed, shared_channel
    from tinyllm_ray.runtime import allocator_env
    from tinyllm_ray.training_stream import training_dataset

    training = config.training
    for name, counts in training_set.counts.items():
        if counts["usable"] == 0:
            log.warning("teacher %s: no usable rationale after training.rationale_filter (%s); only the answer "
                        "task and the other teachers train", name, counts)
    spec = worker_spec(config, layout, model_path, seq2seq, training_set.rows)
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True
    worker_env = allocator_env(training.allocator, training.use_gpu, auto_on_cpu="system")
    channel = shared_channel()
    trainer = TorchTrainer(
        _run_loop,
        # looked up at call time, so a patched train_loop_per_worker still runs (benchmarks, until they pass loop=)
        train_loop_config={"loop": loop or train_loop_per_worker, "spec": spec, "progress": channel},
        scaling_config=ScalingConfig(num_workers=training.num_workers, use_gpu=training.use_gpu,
                                     resources_per_worker=worker_resources(training),
                                     placement_strategy=training.placement_strategy),
        datasets={"train": training_dataset(training_set)},
        dataset_config=DataConfig(execution_options=ingest),
        run_config=RunConfig(name=run_name, storage_path=str(layout.train_storage),
                             failure_config=FailureConfig(max_failures=training.max_failures),
                             # resuming needs the latest registered checkpoint only (registered once every rank
                             # reported it); kept runs also keep the last DeepSpeed state beside the final export
                             checkpoint_config=CheckpointConfig(num_to_keep=2 if training.keep_checkpoints else 1),
                             # DeveloperAPI in Ray 2.60; merged with the job's runtime env
                             worker_runtime_env={"env_vars": worker_env}),
    )
    console().stage_started("train", f"{config.student.model}, {training_set.rows} problems x {len(spec.tasks)} "
                                     f"tasks, {spec.total_optimizer_steps} steps, ZeRO-{training.resolved_zero_stage}"
                                     f" x {training.num_workers}")
    start = time.time()
    with followed(channel, console().progress("train", spec.total_optimizer_steps, "steps"), _step_facts):
        return trainer.fit(), spec, start


def _run_loop(config: dict[str, Any]) -> None:
    """Ray Train's entry point on every worker: the chosen loop with the run's spec, progress to the driver."""
    from tinyllm_ray.progress_channel import install

    install(config.get("progress"))
    config["loop"](config["spec"])


def _step_facts(event: dict[str, Any]) -> tuple[int, dict[str, str]]:
    """Rank 0's step event as the progress display shows it: loss per task, rank 0's tokens a second."""
    from tinyllm_ray.progress import rate_text

    losses = " ".join(f"{name[:10]} {value:.2f}" for name, value in event.get("task_losses", {}).items())
    return int(event["step"]), {"loss": losses or f"loss {event['loss']:.3f}",
                                "speed": rate_text(event.get("tokens_per_s", 0.0), 1.0, "tok")}


def load_rationales(layout: RunLayout, teacher: str):
    """The columns of a teacher's rationales that the whole-split join reads (not the prompts, most of the bytes):
    what benchmarks/ and tests compare the streamed training set against."""
    from tinyllm_ray.training_data import RATIONALE_COLUMNS

    from tinyllm_ray.training_stream import require_rationales

    return read_table(require_rationales(layout, teacher), RATIONALE_SCHEMA, columns=list(RATIONALE_COLUMNS))


def final_export(result) -> tuple[Any, dict[str, Any]]:
    """The run's final HF export (reported with ``final=True``), never a mid-run DeepSpeed checkpoint."""
    candidates = [(result.checkpoint, result.metrics)] + list(reversed(result.best_checkpoints or []))
    for checkpoint, metrics in candidates:
        if checkpoint is not None and (metrics or {}).get("final"):
            return checkpoint, dict(metrics)
    raise TrainingError("training finished without exporting the student checkpoint")

