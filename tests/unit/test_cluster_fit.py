"""Requests no node can ever hold are found before anything starts (cluster_fit, pure: plain resource dicts)."""

from __future__ import annotations

import math

import pytest

from tinyllm_ray.cluster_fit import (NodeShape, Request, actor_bundle, evaluation_request, fit_problems,
                                     request_problems, teacher_request, training_request, worker_resources)
from tinyllm_ray.config import TrainingConfig

HEAD = NodeShape("node 10.0.0.1", {"CPU": 4, "memory": 16 * 2**30, "node:__internal_head__": 1})
GPU4 = NodeShape("node 10.0.0.2", {"CPU": 32, "GPU": 4, "tinyllm_teacher": 1, "accelerator_type:A10G": 1})
TRAINER = NodeShape("node 10.0.0.3", {"CPU": 8, "GPU": 1, "tinyllm_trainer": 4})
NODES = [HEAD, GPU4, TRAINER]


def teacher(args: dict) -> Request:
    return teacher_request("llama", args)


def test_actor_bundle_is_what_ray_remote_asks_for():
    assert actor_bundle({"num_cpus": 2, "num_gpus": 4, "accelerator_type": "H100", "resources": {"t": 1}}) == \
        {"CPU": 2.0, "GPU": 4.0, "accelerator_type:H100": 0.001, "t": 1.0}
    assert actor_bundle({"num_cpus": 1, "num_gpus": 0}) == {"CPU": 1.0}  # zero amounts ask for nothing


def test_a_teacher_that_fits_one_node_passes():
    assert request_problems(teacher({"num_cpus": 4, "num_gpus": 4, "resources": {"tinyllm_teacher": 1}}), NODES) == []
    assert request_problems(teacher({"num_cpus": 1, "num_gpus": 0, "accelerator_type": "A10G"}), NODES) == []


def test_more_gpus_than_any_node_names_the_teacher_the_request_and_the_largest_node():
    [problem] = request_problems(teacher({"num_cpus": 1, "num_gpus": 8}), NODES)
    assert problem.startswith("teacher 'llama' (one actor) asks for {CPU: 1, GPU: 8}, which no node")
    assert "GPU: 8 > 4, the most on one node (node 10.0.0.2)" in problem
    assert "Largest node: node 10.0.0.2 {CPU: 32, GPU: 4}" in problem
    assert "teachers.llama.resources" in problem and "tensor_parallel_size" in problem


def test_a_custom_resource_no_node_advertises():
    [problem] = request_problems(teacher({"num_cpus": 1, "num_gpus": 1, "resources": {"tinyllm_teachr": 1}}), NODES)
    assert "tinyllm_teachr: no node advertises it" in problem


def test_resources_that_exist_only_on_different_nodes():
    # GPUs are on the trainer node, the teacher resource on the GPU node: both exist, no node has both
    [problem] = request_problems(teacher({"num_cpus": 1, "num_gpus": 1, "resources": {"tinyllm_trainer": 1,
                                                                                       "tinyllm_teacher": 1}}), NODES)
    assert "no single node has all of these at once" in problem


def test_autoscaler_node_types_count_as_nodes_it_can_start():
    big = NodeShape("node type gpu-8x", {"CPU": 96, "GPU": 8}, max_count=math.inf)
    request = teacher({"num_cpus": 1, "num_gpus": 8})
    assert request_problems(request, NODES, [big]) == []
    assert request_problems(request, [], [big]) == []  # scale from zero
    assert "node type gpu-8x" not in request_problems(request, NODES)[0]


def _training(**settings) -> Request:
    return training_request(TrainingConfig(**settings))


def test_strict_pack_wider_than_a_node():
    request = _training(num_workers=5, cpus_per_worker=8, placement_strategy="STRICT_PACK")
    [problem] = request_problems(request, NODES)
    assert "STRICT_PACK puts all 5 workers on one node, {CPU: 40}" in problem
    assert "CPU: 40 > 32, the most on one node (node 10.0.0.2)" in problem and "Use placement_strategy PACK" in problem
    assert request_problems(_training(num_workers=5, cpus_per_worker=8, placement_strategy="PACK"), NODES) == []
    assert request_problems(_training(num_workers=4, cpus_per_worker=8, placement_strategy="STRICT_PACK"), NODES) == []


def test_a_placement_group_larger_than_the_whole_cluster():
    # one GPU per worker, 4 + 1 GPUs up: 5 workers fit, 6 never do
    assert request_problems(_training(num_workers=5, use_gpu=True), NODES) == []
    [problem] = request_problems(_training(num_workers=6, use_gpu=True), NODES)
    assert "6 workers of {CPU: 1, GPU: 1} are reserved together, but the cluster (3 node(s) up, no autoscaler) " \
           "holds at most 5 of them" in problem
    # an autoscaler that may start more GPU nodes makes it feasible
    more = NodeShape("node type gpu-1x", {"CPU": 8, "GPU": 1}, max_count=10)
    assert request_problems(_training(num_workers=6, use_gpu=True), NODES, [more]) == []


def test_strict_spread_needs_one_node_per_worker():
    request = _training(num_workers=3, custom_resources_per_worker={"tinyllm_trainer": 1},
                        placement_strategy="STRICT_SPREAD")
    [problem] = request_problems(request, NODES)  # only one node advertises tinyllm_trainer
    assert "reserved together on different nodes" in problem and "holds at most 1" in problem
    assert request_problems(_training(num_workers=3, placement_strategy="STRICT_SPREAD"), NODES) == []
    assert request_problems(_training(num_workers=3, custom_resources_per_worker={"tinyllm_trainer": 1},
                                      placement_strategy="SPREAD"), NODES) == []


def test_worker_resources_and_the_evaluation_task():
    training = TrainingConfig(cpus_per_worker=2, use_gpu=True, custom_resources_per_worker={"tinyllm_trainer": 1})
    assert worker_resources(training) == {"CPU": 2, "tinyllm_trainer": 1, "GPU": 1}
    assert evaluation_request(training).bundles == (worker_resources(training),)
    [problem] = request_problems(evaluation_request(TrainingConfig(cpus_per_worker=64)), NODES)
    assert problem.startswith("the student's evaluation") and "CPU: 64 > 32" in problem


def test_fractions_add_up_as_ray_counts_them():
    node = NodeShape("node a", {"CPU": 0.3})
    assert request_problems(_training(num_workers=3, cpus_per_worker=0.1, placement_strategy="STRICT_PACK"),
                            [node]) == []


def test_every_problem_of_every_request_in_order():
    found = fit_problems([teacher({"num_cpus": 1, "num_gpus": 8}), _training(num_workers=2),
                          _training(num_workers=2, custom_resources_per_worker={"nowhere": 1})], NODES)
    assert len(found) == 2 and found[0].startswith("teacher 'llama'") and "nowhere" in found[1]


@pytest.mark.parametrize("nodes", [[], ()])
def test_an_empty_cluster_is_a_problem(nodes):
    assert request_problems(_training(), nodes) == ["training (2 workers, PACK): the cluster reports no nodes"]
