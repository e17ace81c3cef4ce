"""Sizing bulk inference: actors and CPUs for a run (cluster.plan_inference), on a cluster of fixed size
or one that can grow (an autoscaling pool, waiting for capacity), and the size of the todo parts.

One actor per GPU when there are GPUs; on CPU one single-threaded actor per CPU minus a decode share
(max(0.5, CPUs/8)): the forward is ~95% of the work, single-threaded actors use cores best, and a fixed
thread count keeps results bit-identical to predict.predict (model/forward.py).
"""


from __future__ import annotations

import math
from dataclasses import replace

from raysegment.cluster import capacity
from raysegment.cluster.plan import ClusterResources, InferPlan, cluster_resources, plan_inference
from raysegment.errors import PlanError
from raysegment.infer.config import ScalingSection


def plan(scaling: ScalingSection, resources: ClusterResources) -> InferPlan:
    """Actors and CPUs for this run (InferConfig.scaling) on a cluster of fixed size (raises
    cluster.PlanError when it cannot be scheduled)."""
    use_gpu = resources.gpus >= 1 if scaling.use_gpu is None else scaling.use_gpu
    if scaling.device == "cuda" and not use_gpu:
        raise PlanError("--device cuda needs GPU actors: " + ("drop --no-gpu" if scaling.use_gpu is False else
                        f"the cluster has {resources.describe()}"))
    wanted = scaling.num_actors or scaling.max_actors
    if use_gpu:
        fixed = plan_inference(resources, wanted, use_gpu=True)
    else:
        decode_share = max(0.5, resources.cpus / 8)
        num_actors = wanted or max(1, int(resources.cpus - decode_share + 0.5))
        cpus_per_actor = max(resources.cpus - decode_share, 0.5) / num_actors
        if cpus_per_actor >= 1:
            cpus_per_actor = float(int(cpus_per_actor))
        fixed = plan_inference(resources, num_actors, use_gpu=False, cpus_per_actor=cpus_per_actor)
    if scaling.min_actors and scaling.min_actors < fixed.num_actors:  # a pool that may shrink to min_actors
        return replace(fixed, num_actors=scaling.min_actors, max_actors=fixed.num_actors)
    return fixed


def elastic_plan(scaling: ScalingSection, resources: ClusterResources):
    """(make_plan, minimum bundles) for a cluster that can grow: an autoscaling pool of min..max actors.

    GPUs: the user's --gpu/--no-gpu, else whether the cluster can have GPUs (some up, or GPU node types in its
    autoscaling config), never a snapshot with no GPU node up yet. One GPU (+1 CPU) or one CPU per actor,
    so the autoscaler adds nodes of the right type. max: --max-actors, else as many as the cluster can grow
    to.
    """
    use_gpu = capacity.gpus_possible(resources) if scaling.use_gpu is None else scaling.use_gpu
    low = scaling.min_actors or scaling.num_actors or 1
    grow_to = capacity.max_resources()

    def make_plan(res: ClusterResources) -> InferPlan:
        if use_gpu:
            high = scaling.max_actors or scaling.num_actors or int(max(grow_to.get("GPU", 0), res.gpus))
            return replace(plan_inference(res, low, use_gpu=True), max_actors=max(low, high))
        cpus = max(grow_to.get("CPU", 0), res.cpus)
        high = scaling.max_actors or scaling.num_actors or int(cpus - max(0.5, cpus / 8))
        return replace(plan_inference(res, low, use_gpu=False, cpus_per_actor=1.0), max_actors=max(low, high))

    bundles = ([{"CPU": 1.0, "GPU": 1.0} if use_gpu else {"CPU": 1.0}] * low
               + [{"CPU": 1.0 if use_gpu else 0.5}])
    return make_plan, bundles


def plan_run(scaling: ScalingSection, wait_s: float, dry_run: bool) -> tuple[InferPlan | None, str]:
    """(plan, note). Waits for capacity when wait_s > 0 (not in a dry run, which only says what it would
    wait for)."""
    resources = cluster_resources()
    if wait_s <= 0:
        return plan(scaling, resources), ""
    make_plan, bundles = elastic_plan(scaling, resources)
    if dry_run:
        try:
            return make_plan(resources), ""
        except PlanError:
            return None, (f"not up yet: a run would wait up to {wait_s:g} s "
                          f"for {capacity.describe_need(bundles)} "
                          f"({capacity.describe_up(bundles, resources)} now)")
    return capacity.wait_for_plan(make_plan, bundles, wait_s, what="the minimum of this plan"), ""


def todo_rows_per_file(n_inputs: int, batch_size: int) -> int:
    """Rows per todo part (one decode task each): ~64 parts for a small run so every actor is fed from the
    start, >= 1 batch each, <= 256 (a part in flight is what a node loss costs; smaller parts finish, and
    reach the output, sooner)."""
    return int(min(256, max(batch_size, math.ceil(n_inputs / 64))))
