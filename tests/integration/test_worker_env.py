"""The real Ray local cluster runs this job's workers at the driver's priority, not Ray's default nice 15."""

from __future__ import annotations


def test_local_workers_and_cpu_teachers_run_at_nice_0(ray_cluster):
    from tinyllm_ray.runtime import teacher_env

    def niceness() -> int:  # defined here so that Ray ships it by value (tests/ is not importable on workers)
        import os

        return os.nice(0)

    ray = ray_cluster
    assert ray.get(ray.remote(niceness).remote()) == 0  # the local cluster's job env (WORKER_ENV)
    teacher_like = ray.remote(niceness).options(num_cpus=1, runtime_env={"env_vars": teacher_env(on_gpu=False)})
    assert ray.get(teacher_like.remote()) == 0
    unprioritised = ray.remote(niceness).options(runtime_env={"env_vars": {"RAY_worker_niceness": "15"}})
    assert ray.get(unprioritised.remote()) == 15  # what Ray does without the setting: the check can fail
