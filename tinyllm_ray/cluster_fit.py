"""Whether the cluster can ever hold what a job asks of it. Pure: no Ray (the live cluster is read by
:mod:`tinyllm_ray.cluster_state`).

Ray keeps an actor or a placement group that no node can hold pending, silently and forever (an autoscaler only
logs it as infeasible). So before teachers, training workers or the evaluation actors start, every request is checked
against the shapes of the nodes that are up and, where an autoscaler reported them, the node types it may start:

* one actor / task / worker: some node (type) must offer every resource of it at once;
* a placement group (the training workers) is reserved whole: ``STRICT_PACK`` needs one node for all bundles,
  ``STRICT_SPREAD`` one node per bundle, ``PACK`` / ``SPREAD`` room for every bundle across the nodes (or the node
  types' ``max_count``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tinyllm_ray.config import TrainingConfig

EPSILON = 1e-9  # Ray's resource amounts are fixed-point: 0.1 + 0.2 must fit a node of 0.3
SHOWN = ("CPU", "GPU", "memory")  # resources named in the description of a node besides the ones asked for


@dataclass(frozen=True)
class NodeShape:
    """What one node offers (its total logical resources), or one autoscaler node type and how many it may start."""

    name: str  # "node 10.0.0.3", "node type gpu-workers"
    resources: Mapping[str, float]
    max_count: float = 1  # nodes of this shape there can be (math.inf: an autoscaler node type without a limit)


@dataclass(frozen=True)
class Request:
    """What one part of a job asks of the cluster: ``bundles`` placed with ``strategy`` (None: one actor or task)."""

    who: str  # "teacher 'llama' (one actor)", "training (2 workers)"
    settings: str  # the config keys that decide it, to name in the message
    bundles: tuple[Mapping[str, float], ...]
    strategy: str | None = None


def fits(bundle: Mapping[str, float], resources: Mapping[str, float]) -> bool:
    return all(resources.get(name, 0.0) + EPSILON >= amount for name, amount in bundle.items() if amount > 0)


def copies_that_fit(bundle: Mapping[str, float], resources: Mapping[str, float]) -> float:
    """How many copies of ``bundle`` one node of ``resources`` holds at once."""
    asked = {name: amount for name, amount in bundle.items() if amount > 0}
    if not asked:
        return math.inf
    return min(math.floor((resources.get(name, 0.0) + EPSILON) / amount) for name, amount in asked.items())


def summed(bundles: Sequence[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            total[name] = total.get(name, 0.0) + amount
    return total


def describe(resources: Mapping[str, float], names: Sequence[str] | None = None) -> str:
    """``{CPU: 4, GPU: 1, tinyllm_teacher: 1}`` with the named resources (default: all), memory in GiB."""
    shown = [n for n in (names if names is not None else resources) if n in resources]
    parts = [f"{n}: {resources[n] / 2**30:.1f} GiB" if n == "memory" else f"{n}: {resources[n]:g}" for n in shown]
    return "{" + ", ".join(parts) + "}"


def _largest(shapes: Sequence[NodeShape], bundle: Mapping[str, float]) -> NodeShape:
    """The shape closest to holding ``bundle``: most of its resources present, then most GPUs, CPUs, memory."""
    def key(shape: NodeShape):
        held = sum(1 for n, a in bundle.items() if a > 0 and shape.resources.get(n, 0.0) + EPSILON >= a)
        return (held, *(shape.resources.get(n, 0.0) for n in SHOWN))

    return max(shapes, key=key)


def _no_node_holds(bundle: Mapping[str, float], shapes: Sequence[NodeShape]) -> str:
    """Why no shape holds ``bundle``: each resource no node has enough of (and the most one has), the largest node."""
    short = []
    for name, amount in bundle.items():
        if amount <= 0:
            continue
        most = max(shapes, key=lambda s: s.resources.get(name, 0.0))
        have = most.resources.get(name, 0.0)
        if have <= 0:
            short.append(f"{name}: no node advertises it")
        elif have + EPSILON < amount:
            short.append(f"{name}: {amount:g} > {have:g}, the most on one node ({most.name})")
    largest = _largest(shapes, bundle)
    names = list(dict.fromkeys([*bundle, *SHOWN]))
    why = "; ".join(short) or "no single node has all of these at once"
    return f"{why}. Largest node: {largest.name} {describe(largest.resources, names)}"


def _capacity(bundle: Mapping[str, float], shapes: Sequence[NodeShape], one_per_node: bool) -> float:
    """Copies of ``bundle`` the shapes hold at once (``one_per_node``: at most one per node, STRICT_SPREAD)."""
    total = 0.0
    for shape in shapes:
        per_node = copies_that_fit(bundle, shape.resources)
        if per_node:
            total += shape.max_count * (min(per_node, 1) if one_per_node else per_node)
    return total


def request_problems(request: Request, nodes: Sequence[NodeShape],
                     node_types: Sequence[NodeShape] = ()) -> list[str]:
    """Why ``request`` can never be placed on a cluster of ``nodes`` that an autoscaler may grow by ``node_types``
    (empty: no autoscaler); empty when it can."""
    shapes = [*nodes, *node_types]
    if not shapes:
        return [f"{request.who}: the cluster reports no nodes"]
    change = f"Change {request.settings}, or add a node (type) that offers it."
    found = []
    for bundle in dict.fromkeys(tuple(sorted(b.items())) for b in request.bundles):
        asked = dict(bundle)
        if not any(fits(asked, s.resources) for s in shapes):
            found.append(f"{request.who} asks for {describe(asked)}{' per worker' if request.strategy else ''}, "
                         f"which no node can hold: {_no_node_holds(asked, shapes)}. {change}")
    if found or request.strategy is None or len(request.bundles) < 2:
        return found
    count, bundle = len(request.bundles), dict(request.bundles[0])  # the training workers: identical bundles
    if request.strategy == "STRICT_PACK":
        total = summed(request.bundles)
        if not any(fits(total, s.resources) for s in shapes):
            found.append(f"{request.who}: STRICT_PACK puts all {count} workers on one node, {describe(total)}, "
                         f"which no node can hold: {_no_node_holds(total, shapes)}. Use placement_strategy PACK, "
                         f"or change {request.settings}.")
        return found
    spread = request.strategy == "STRICT_SPREAD"
    # Ray reserves a placement group whole: on the nodes that are up, or on node types the autoscaler may start.
    most = max(_capacity(bundle, nodes, spread), _capacity(bundle, node_types, spread))
    if most < count:
        cluster = f"{len(nodes)} node(s) up, " + (
            ", ".join(f"{t.name} x {t.max_count:g}" for t in node_types) if node_types else "no autoscaler")
        found.append(f"{request.who}: {count} workers of {describe(bundle)} are reserved together"
                     f"{' on different nodes' if spread else ''}, but the cluster ({cluster}) holds at most "
                     f"{int(most)} of them. Change {request.settings}"
                     f"{' (SPREAD or PACK share nodes)' if spread else ''}, or add nodes.")
    return found


def fit_problems(requests: Sequence[Request], nodes: Sequence[NodeShape],
                 node_types: Sequence[NodeShape] = ()) -> list[str]:
    """Every reason some of ``requests`` would wait forever (:func:`request_problems`), in request order."""
    return [problem for request in requests for problem in request_problems(request, nodes, node_types)]


# ---------------------------------------------------------------- what the stages ask for

def actor_bundle(remote_args: Mapping[str, object]) -> dict[str, float]:
    """The resources of ``ray.remote(**remote_args)`` (num_cpus, num_gpus, memory, accelerator_type, resources)."""
    bundle = {"CPU": float(remote_args.get("num_cpus", 1) or 0), "GPU": float(remote_args.get("num_gpus", 0) or 0)}
    if remote_args.get("memory"):
        bundle["memory"] = float(remote_args["memory"])
    if remote_args.get("accelerator_type"):
        bundle[f"accelerator_type:{remote_args['accelerator_type']}"] = 0.001  # what Ray itself asks for
    bundle.update({name: float(amount) for name, amount in dict(remote_args.get("resources") or {}).items()})
    return {name: amount for name, amount in bundle.items() if amount > 0}


def teacher_request(name: str, remote_args: Mapping[str, object]) -> Request:
    """One actor of teacher ``name``, as its kind asks Ray for it (``kind.remote_args``)."""
    return Request(f"teacher {name!r} (one actor)",
                   f"teachers.{name}.resources (num_gpus_per_actor with engine.tensor_parallel_size and "
                   "extra.pipeline_parallel_size, num_cpus_per_actor, accelerator_type, custom_resources)",
                   (actor_bundle(remote_args),))


def worker_resources(training: TrainingConfig) -> dict[str, float]:
    """What one Ray Train worker asks for (``ScalingConfig.resources_per_worker``)."""
    resources = {"CPU": training.cpus_per_worker, **training.custom_resources_per_worker}
    if training.use_gpu:
        resources["GPU"] = 1
    return resources


def training_request(training: TrainingConfig) -> Request:
    return Request(f"training ({training.num_workers} workers, {training.placement_strategy})",
                   "training.num_workers, cpus_per_worker, use_gpu, custom_resources_per_worker or "
                   "placement_strategy", tuple(worker_resources(training) for _ in range(training.num_workers)),
                   strategy=training.placement_strategy)


def trial_driver_request(resources: Mapping[str, float]) -> Request:
    """A sweep trial's driver (one Tune trial), which holds ``resources`` while its run trains and scores."""
    return Request("a sweep trial's driver (one Tune trial)", "sweep.trial_resources", (dict(resources),))


def evaluation_request(training: TrainingConfig) -> Request:
    """One actor of the student's evaluation pool: one training worker's resources (see ``evaluation_job``); each
    of ``evaluation.actors`` must fit some node, as each teacher actor must."""
    return Request("the student's evaluation (one actor with a training worker's resources)",
                   "training.cpus_per_worker, use_gpu or custom_resources_per_worker",
                   (worker_resources(training),))
