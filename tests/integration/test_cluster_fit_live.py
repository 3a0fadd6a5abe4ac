"""On a real multi-node cluster (ray.cluster_utils), what no node can hold stops at once with what to change, instead
of waiting forever; what fits passes. Each driver is a separate process that joins the cluster (as in
test_multinode.py), so a Ray session of other test modules is not involved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def two_roles():
    """Two nodes with different roles: the head as teacher node (2 CPUs, tinyllm_teacher, and tinyllm_driver for
    sweep trials) and a trainer node (3 CPUs, tinyllm_trainer). The checks read what they advertise."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 2, "resources": {"tinyllm_teacher": 1, "tinyllm_driver": 2},
                                      "include_dashboard": False,
                                      "object_store_memory": 200 * 2**20})
    cluster.add_node(num_cpus=3, resources={"tinyllm_trainer": 2}, object_store_memory=200 * 2**20)
    cluster.wait_for_nodes()
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tinyllm-ray"), *args], capture_output=True, text=True, timeout=10 * 60,
                          env=dict(os.environ))


def test_a_teacher_resource_no_node_advertises_stops_generate(two_roles, tmp_path: Path):
    out = tmp_path / "run"
    result = _cli("generate", "tiny", "-o", str(out), "--set", f"ray_address={two_roles}",
                  "--set", "teachers.tiny_a.resources.custom_resources={tinyllm_teachr: 1}")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    message = result.stderr
    assert "the cluster can never start this" in message
    assert "teacher 'tiny_a' (one actor) asks for {CPU: 1, tinyllm_teachr: 1}" in message
    assert "tinyllm_teachr: no node advertises it" in message and "Largest node: node " in message
    assert "teacher 'tiny_b'" not in message  # it fits: only the misfit is named
    assert not list((out / "rationales").glob("*/*.parquet"))  # stopped before any actor started


def test_strict_pack_wider_than_the_trainer_node_stops_run_before_generating(two_roles, tmp_path: Path):
    out = tmp_path / "run"
    result = _cli("run", "tiny", "-o", str(out), "--set", f"ray_address={two_roles}",
                  "--set", "training.custom_resources_per_worker={tinyllm_trainer: 1}",
                  "--set", "training.cpus_per_worker=2", "--set", "training.placement_strategy=STRICT_PACK")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "training (2 workers, STRICT_PACK): STRICT_PACK puts all 2 workers on one node, " \
           "{CPU: 4, tinyllm_trainer: 2}" in result.stderr
    assert "CPU: 4 > 3, the most on one node" in result.stderr and "Use placement_strategy PACK" in result.stderr
    assert not (out / "rationales").exists()  # nothing generated for a run that could never train


def _check(address: str, overrides: list[str], node_types: list[dict] | None = None) -> dict:
    """``require_job_fit`` of the tiny job (every teacher, training, evaluation) in a driver joined to the cluster;
    ``node_types``: first publish them as an autoscaler does (its cluster config in the GCS)."""
    script = textwrap.dedent(f"""
        import json, sys
        import ray
        from tinyllm_ray.cluster_state import ClusterFitError, require_job_fit
        from tinyllm_ray.config import load_config

        job = load_config("tiny", {["ray_address=" + address, *overrides]!r})
        ray.init(address=job.ray_address)
        types = {node_types!r}
        if types:
            from ray.core.generated import autoscaler_pb2
            from ray.experimental.internal_kv import _internal_kv_put
            config = autoscaler_pb2.ClusterConfig(node_group_configs=[autoscaler_pb2.NodeGroupConfig(**t) for t in types])
            _internal_kv_put(ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, config.SerializeToString(),
                             namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE)
        try:
            require_job_fit(job, job.teachers, training=True)
            print(json.dumps({{"fits": True}}))
        except ClusterFitError as err:
            print(json.dumps({{"fits": False, "message": str(err)}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=5 * 60,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_requests_that_fit_the_roles_pass_and_autoscaler_node_types_count(two_roles):
    placed = ["teachers.tiny_a.resources.custom_resources={tinyllm_teacher: 1}",
              "teachers.tiny_b.resources.custom_resources={tinyllm_teacher: 1}",
              "training.custom_resources_per_worker={tinyllm_trainer: 1}", "training.placement_strategy=STRICT_PACK"]
    assert _check(two_roles, placed) == {"fits": True}
    gpus = [*placed, "training.use_gpu=true"]  # no GPU anywhere: training and its evaluation task never start
    refused = _check(two_roles, gpus)
    assert not refused["fits"] and "GPU: no node advertises it" in refused["message"]
    assert "the student's evaluation" in refused["message"]
    # An autoscaler that may start trainer nodes with GPUs: the same request can be placed (after a scale-up).
    trainer_gpus = {"name": "trainer-gpu", "resources": {"CPU": 8, "GPU": 2, "tinyllm_trainer": 2},
                    "min_count": 0, "max_count": 2}
    assert _check(two_roles, gpus, [trainer_gpus]) == {"fits": True}


TRIAL = textwrap.dedent("""
    import json, sys
    import ray
    from ray import tune
    from tinyllm_ray.cluster_fit import trial_driver_request
    from tinyllm_ray.cluster_state import ClusterFitError, require_fit
    from tinyllm_ray.config import SweepConfig
    from tinyllm_ray.sweep import trial_resources

    ray.init(address=sys.argv[1])
    asked = trial_resources(SweepConfig(trial_resources={"tinyllm_driver": 1}))
    require_fit([trial_driver_request(asked)])
    try:
        require_fit([trial_driver_request({"tinyllm_drivr": 1})])
        refused = None
    except ClusterFitError as err:
        refused = str(err)

    def trial(params):
        tune.report({"node": ray.get_runtime_context().get_node_id()})

    grid = tune.Tuner(tune.with_resources(trial, asked), param_space={"x": tune.grid_search([1, 2])},
                      run_config=tune.RunConfig(storage_path=sys.argv[2], verbose=0)).fit()
    head = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("tinyllm_driver"))
    print(json.dumps({"asked": asked, "nodes": [r.metrics["node"] for r in grid], "head": head,
                      "errors": [str(r.error) for r in grid if r.error], "refused": refused}))
""")


def test_sweep_trial_drivers_ask_only_for_their_resource_and_run_where_it_is(two_roles, tmp_path: Path):
    result = subprocess.run([sys.executable, "-c", TRIAL, two_roles, str(tmp_path)], capture_output=True, text=True,
                            timeout=5 * 60, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    ran = json.loads(result.stdout.strip().splitlines()[-1])
    assert ran["asked"] == {"tinyllm_driver": 1.0} and ran["errors"] == []  # Tune takes a trial without CPU
    assert ran["nodes"] == [ran["head"]] * 2  # the one node that advertises it, never the trainer node
    assert "a sweep trial's driver (one Tune trial)" in ran["refused"] and "sweep.trial_resources" in ran["refused"]
