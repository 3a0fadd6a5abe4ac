"""A multi-node Ray cluster on one machine (ray.cluster_utils): teacher actors and training workers are steered to
different nodes by the custom resources those nodes advertise, as on a real cluster with a teacher GPU group and
a trainer GPU group (cluster/). The job runs as a separate driver process that joins the cluster, like a submitted
job does, so this test's own Ray session (if any) is not involved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyllm_ray.metrics import read_tensorboard_scalars
from tinyllm_ray.schemas import read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent


@pytest.fixture
def three_node_cluster():
    """Head (1 CPU, no role), a teacher node and a trainer node, each with 2 logical CPUs and its role resource."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes = {
        "teacher": cluster.add_node(num_cpus=2, resources={"tinyllm_teacher": 2}, object_store_memory=300 * 2**20),
        "trainer": cluster.add_node(num_cpus=2, resources={"tinyllm_trainer": 2}, object_store_memory=300 * 2**20),
    }
    cluster.wait_for_nodes()
    try:
        yield cluster.address, {role: node.node_id for role, node in nodes.items()}, cluster.head_node.node_id
    finally:
        cluster.shutdown()


def test_teachers_and_trainers_run_on_their_own_nodes(three_node_cluster, tmp_path: Path):
    address, node_of, head = three_node_cluster
    out = tmp_path / "run"
    placement = []
    for teacher in ("tiny_a", "tiny_b"):
        placement += ["--set", f"teachers.{teacher}.resources.custom_resources={{tinyllm_teacher: 1}}"]
    result = subprocess.run(
        [str(BIN / "tinyllm-ray"), "run", "tiny", "-o", str(out), "--set", f"ray_address={address}",
         *placement, "--set", "training.custom_resources_per_worker={tinyllm_trainer: 1}",
         "--set", "training.placement_strategy=SPREAD", "--set", "evaluation.teachers=false"],
        capture_output=True, text=True, timeout=20 * 60, env=dict(os.environ))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len({node_of["teacher"], node_of["trainer"], head}) == 3
    for teacher in ("tiny_a", "tiny_b"):
        manifest = read_manifest(out / "rationales" / teacher)
        assert manifest["nodes"] == [node_of["teacher"]], manifest["nodes"]
        assert manifest["counts"]["rows"] == 16
    student = read_manifest(out / "student")
    # SPREAD is a preference: both workers still need the trainer resource, which only the trainer node has.
    assert student["worker_nodes"] == [node_of["trainer"]] * 2
    assert student["optimizer_steps"] == 3
    # Training metrics reached TensorBoard from rank 0, generation metrics from the driver.
    train_scalars = read_tensorboard_scalars(out / "metrics" / "train")
    assert {step for tag, step in train_scalars if tag == "loss"} == {1, 2, 3}
    generated = read_tensorboard_scalars(out / "metrics" / "generate" / "tiny_a")
    assert generated[("rows", max(step for tag, step in generated if tag == "rows"))] == 16
    assert json.loads((out / "evaluation" / "report.json").read_text())["results"][0]["total"] == 8
