"""The ``vllm.LLM`` keywords a teacher's config turns into: an engine spanning several GPUs (tensor or pipeline
parallel) runs vLLM's own worker processes inside the actor that holds those GPUs, unless the job names a backend."""

from __future__ import annotations

from tinyllm_ray.config import TeacherConfig
from tinyllm_ray.teachers.vllm import engine_kwargs


def teacher(gpus: float, **engine) -> TeacherConfig:
    return TeacherConfig.model_validate({"name": "t", "model": "m", "engine": engine,
                                         "resources": {"num_gpus_per_actor": gpus}})


def test_a_multi_gpu_engine_uses_vllms_processes_and_a_named_backend_is_kept():
    assert engine_kwargs(teacher(2, tensor_parallel_size=2), "m")["distributed_executor_backend"] == "mp"
    pipeline = engine_kwargs(teacher(2, extra={"pipeline_parallel_size": 2}), "m")
    assert pipeline["distributed_executor_backend"] == "mp" and pipeline["pipeline_parallel_size"] == 2
    named = teacher(2, tensor_parallel_size=2, extra={"distributed_executor_backend": "ray"})
    assert engine_kwargs(named, "m")["distributed_executor_backend"] == "ray"
    assert "distributed_executor_backend" not in engine_kwargs(teacher(1), "m")
