"""Connecting to Ray and sizing work from what the cluster really has.

Plans are checked BEFORE anything is submitted: Ray would otherwise wait forever for resources that do
not exist (8 GPU workers on a CPU cluster), or starve Ray Data of CPUs (2 training workers x 1 CPU on a
2-CPU machine leave nothing for the read tasks, and the job hangs). A plan that cannot run raises
`PlanError` naming what was asked and what exists.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from raysegment import logs
from raysegment.errors import PlanError

log = logging.getLogger(__name__)




def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join `address` (or $RAY_ADDRESS) if given, else start a local Ray for this process (idempotent)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = _worker_runtime_env()
    # Workers' output reaches this console only with --verbose (logs.py); it stays in Ray's session logs.
    if address:
        ray.init(address=address, log_to_driver=logs.verbose(), runtime_env=runtime_env,
                 logging_level=logs.ray_logging_level())
    else:
        # address="local": never silently join a cluster some earlier `ray start` left on this machine.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
                 configure_logging=True, logging_level=logs.ray_logging_level(), log_to_driver=logs.verbose())
    logs.quiet_ray()


def _worker_runtime_env() -> dict | None:
    """runtime_env giving every worker of this job the driver's S3 endpoint/region settings.

    Needed when starting Ray AND when joining a cluster: workers on other nodes do not inherit the
    driver's environment. Only non-secret variables (storage.WORKER_ENV_VARS) are shipped, never
    credentials (a runtime_env is visible in the dashboard). Inside a `ray job submit` job, variables the
    job's own runtime_env already sets are left out: ray.init refuses a second value for the same key.
    """
    import json

    from raysegment.io import storage

    env = storage.worker_env()
    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray's job supervisor for the driver
    if injected:
        try:
            job_env = (json.loads(injected).get("runtime_env") or {}).get("env_vars") or {}
        except (ValueError, AttributeError):
            job_env = {}
        env = {k: v for k, v in env.items() if k not in job_env}
    return {"env_vars": env} if env else None


@dataclass(frozen=True)
class NodeResources:
    cpus: float
    gpus: float


@dataclass(frozen=True)
class ClusterResources:
    nodes: tuple[NodeResources, ...]

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    def describe(self) -> str:
        return f"{len(self.nodes)} node(s), {self.cpus:g} CPU, {self.gpus:g} GPU in total" + (
            " (per node: " + ", ".join(f"{n.cpus:g} CPU/{n.gpus:g} GPU" for n in self.nodes) + ")"
        )


def cluster_resources() -> ClusterResources:
    """Resources of the alive nodes of the connected Ray cluster."""
    import ray

    nodes = tuple(
        NodeResources(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
        for n in ray.nodes()
        if n.get("Alive")
    )
    return ClusterResources(nodes)


def _pack(demand_cpu: float, demand_gpu: float, count: int, nodes: tuple[NodeResources, ...],
          reserve_cpu: float) -> int:
    """How many of `count` bundles (cpu, gpu) fit on the nodes, first-fit, keeping `reserve_cpu` free in
    total."""
    free = [[n.cpus, n.gpus] for n in nodes]
    placed = 0
    for _ in range(count):
        for slot in free:
            if slot[0] + 1e-9 >= demand_cpu and slot[1] + 1e-9 >= demand_gpu:
                slot[0] -= demand_cpu
                slot[1] -= demand_gpu
                placed += 1
                break
    left_cpu = sum(s[0] for s in free)
    if placed == count and left_cpu + 1e-9 < reserve_cpu:
        return placed - 1  # fits, but starves the data pipeline
    return placed


def _bundles(count: int | str, name: str, use_gpu: bool, cpus: float) -> str:
    """e.g. "2 worker(s) x (1 GPU + 4 CPU)": what a plan asks for, in the words of its errors."""
    return f"{count} {name}(s) x ({'1 GPU + ' if use_gpu else ''}{cpus:g} CPU)"


@dataclass(frozen=True)
class TrainPlan:
    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    data_cpus: float  # CPUs left for Ray Data's decode / augmentation tasks

    def describe(self) -> str:
        return (f"{_bundles(self.num_workers, 'worker', self.use_gpu, self.cpus_per_worker)}, "
                f"{self.data_cpus:g} CPU left for data loading")


def plan_training(
    resources: ClusterResources,
    num_workers: int,
    use_gpu: bool | None = None,
    cpus_per_worker: float | None = None,
    data_cpus: float = 1.0,
) -> TrainPlan:
    """Size training workers from the cluster. `use_gpu=None` uses GPUs when the cluster has them.

    CPU workers share the CPUs minus `data_cpus` (fractions allowed: a 2-CPU laptop runs 2 workers
    x 0.5 CPU and keeps 1 CPU for Ray Data). Raises PlanError when the plan cannot be scheduled.
    """
    if num_workers < 1:
        raise PlanError(f"num_workers must be >= 1, got {num_workers}")
    if use_gpu is None:
        use_gpu = resources.gpus >= 1
    data_cpus = min(data_cpus, max(resources.cpus - 0.5 * num_workers, 0.0)) if not use_gpu else data_cpus
    if cpus_per_worker is None:
        if use_gpu:
            cpus_per_worker = 1.0
        else:
            cpus_per_worker = max(resources.cpus - data_cpus, 0.0) / num_workers
            cpus_per_worker = min(cpus_per_worker, max((n.cpus for n in resources.nodes), default=0))
            # Whole CPUs when there are enough, so torch threads map onto cores.
            if cpus_per_worker >= 1:
                cpus_per_worker = float(int(cpus_per_worker))
    gpu = 1.0 if use_gpu else 0.0
    if cpus_per_worker <= 0 or _pack(cpus_per_worker, gpu, num_workers, resources.nodes,
                                     data_cpus) < num_workers:
        want = f"{num_workers} worker(s) x ({'1 GPU + ' if use_gpu else ''}{cpus_per_worker:g} CPU)"
        raise PlanError(
            f"cannot schedule {want} plus {data_cpus:g} CPU for data loading: the cluster has "
            f"{resources.describe()}. Use fewer workers (--num-workers), "
            + ("--no-gpu, " if use_gpu else "")
            + "or add nodes."
        )
    return TrainPlan(num_workers, use_gpu, cpus_per_worker, data_cpus)


@dataclass(frozen=True)
class InferPlan:
    num_actors: int
    use_gpu: bool
    cpus_per_actor: float
    decode_cpus: float  # CPUs left for decode/preprocess/postprocess tasks
    max_actors: int | None = None  # autoscaling pool: grows up to this many as nodes join (None: fixed)

    @property
    def pool_max(self) -> int:
        return max(self.num_actors, self.max_actors or self.num_actors)

    def describe(self) -> str:
        count = self.num_actors if self.pool_max == self.num_actors else f"{self.num_actors}-{self.pool_max}"
        return (f"{_bundles(count, 'inference actor', self.use_gpu, self.cpus_per_actor)}, "
                f"{self.decode_cpus:g} CPU for decode and postprocess")


def plan_inference(
    resources: ClusterResources,
    num_actors: int | None = None,
    use_gpu: bool | None = None,
    cpus_per_actor: float | None = None,
) -> InferPlan:
    """One actor per GPU when the cluster has GPUs, else CPU actors that leave at least 1 CPU for decoding."""
    if use_gpu is None:
        use_gpu = resources.gpus >= 1
    if use_gpu:
        num_actors = num_actors or max(1, int(resources.gpus))  # 0 GPUs: 1 actor, refused below, not 0
        cpus_per_actor = 1.0 if cpus_per_actor is None else cpus_per_actor
        decode_cpus = resources.cpus - num_actors * cpus_per_actor
    else:
        num_actors = num_actors or max(1, int(resources.cpus // 4))
        if cpus_per_actor is None:
            cpus_per_actor = max(resources.cpus - 1.0, 0.5) / num_actors
            if cpus_per_actor >= 1:
                cpus_per_actor = float(int(cpus_per_actor))
        decode_cpus = resources.cpus - num_actors * cpus_per_actor
    gpu = 1.0 if use_gpu else 0.0
    if decode_cpus < 0.5 or _pack(cpus_per_actor, gpu, num_actors, resources.nodes, 0.5) < num_actors:
        want = f"{num_actors} actor(s) x ({'1 GPU + ' if use_gpu else ''}{cpus_per_actor:g} CPU)"
        raise PlanError(
            f"cannot schedule {want} and keep CPU for decoding: the cluster has {resources.describe()}. "
            "Use fewer actors (--num-actors) or add nodes."
        )
    return InferPlan(num_actors, use_gpu, cpus_per_actor, decode_cpus)
