"""The live cluster's node shapes, and the check every stage runs against them before it starts actors or workers
(the logic is :mod:`tinyllm_ray.cluster_fit`). Glue only."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from tinyllm_ray.cluster_fit import (NodeShape, Request, evaluation_request, fit_problems, teacher_request,
                                     training_request)
from tinyllm_ray.config import JobConfig
from tinyllm_ray.errors import TinyLLMError


class ClusterFitError(TinyLLMError):
    """Something the job asks for can never be placed on this cluster; the message says what to change."""


def cluster_shapes() -> tuple[list[NodeShape], list[NodeShape]]:
    """(the nodes that are up, the node types an autoscaler reported: empty without one) of the connected cluster."""
    import ray
    import ray._private.state  # the node types the autoscaler reports to the GCS; Ray Data reads them the same way

    nodes = [NodeShape(f"node {n['NodeManagerAddress']} ({n['NodeID'][:8]})", dict(n["Resources"]))
             for n in ray.nodes() if n["Alive"]]
    config = ray._private.state.state.get_cluster_config()
    types = [NodeShape(f"node type {group.name}", dict(group.resources),
                       math.inf if group.max_count == -1 else group.max_count)
             for group in (config.node_group_configs if config else []) if group.max_count != 0]
    return nodes, types


def require_fit(requests: Sequence[Request]) -> None:
    """Raise :class:`ClusterFitError` naming every request the connected cluster can never place."""
    problems = fit_problems(requests, *cluster_shapes())
    if problems:
        raise ClusterFitError("the cluster can never start this (Ray would wait for it forever):\n"
                              + "\n".join(f"  - {p}" for p in problems))


def teacher_requests(teachers: Iterable) -> list[Request]:
    """One actor of each teacher, as its kind asks Ray for it."""
    from tinyllm_ray.teachers import kind_of

    return [teacher_request(t.name, kind_of(t).remote_args(t)) for t in teachers]


def require_job_fit(config: JobConfig, teachers: Iterable = (), training: bool = False) -> None:
    """Connect, then check the teachers' actors and (``training``) the training workers and the evaluation actors: what
    `run` and `sweep` check before their first stage, so a misfit stops before hours of generation."""
    from tinyllm_ray.runtime import connect

    connect(config)
    requests = teacher_requests(teachers)
    if training:
        requests += [training_request(config.training), evaluation_request(config.training)]
    require_fit(requests)
