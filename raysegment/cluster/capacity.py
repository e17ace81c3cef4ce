"""Waiting for an autoscaling cluster to grow, instead of refusing a plan for nodes that are not up yet.

One module for `infer` and `train`. A plan is tried against the nodes that are alive now; on a cluster
that can grow, a plan that does not fit yet is not an error but something to wait for:

- demand: a placement group with the plan's bundles is created while waiting. A pending placement group
  is what Ray's autoscaler scales for, so the missing nodes are launched; it is removed as soon as the
  plan fits or the wait ends (in a `finally`), so nothing stays pinned (unlike `request_resources`,
  which holds nodes until someone clears it);
- progress: every `report_s` one line says what is awaited and what is up
  ("waiting for 4 GPU: 1 up, 2m10s"), so a wait is never silent;
- timeout: after `timeout_s` a `RetryableError` (exit 3: rerun later) says what never arrived.

When to wait (`wait_timeout`): when joining an existing cluster (--address or $RAY_ADDRESS; clusters are
what autoscale) the default is DEFAULT_WAIT_S; a local Ray started for this process cannot grow, so it
fails fast (PlanError, exit 2). `--wait-for-capacity SECONDS` and `--no-wait` override both ways.
Whether to use GPUs on a growable cluster comes from the user or the cluster's autoscaling config
(`max_resources`), never from a snapshot that shows 0 GPUs because none are up yet.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from raysegment.cluster.plan import ClusterResources, cluster_resources
from raysegment.errors import PlanError, RetryableError

log = logging.getLogger(__name__)

DEFAULT_WAIT_S = 900.0  # a GPU node takes minutes to boot; spot capacity can take longer
POLL_S = 1.0
REPORT_S = 10.0

P = TypeVar("P")


def wait_timeout(address: str | None, wait_for_capacity: float | None = None, no_wait: bool = False) -> float:
    """Seconds to wait for capacity: 0 = fail fast. Flags win; else wait only when joining a cluster."""
    if no_wait:
        return 0.0
    if wait_for_capacity is not None:
        return max(0.0, float(wait_for_capacity))
    return DEFAULT_WAIT_S if (address or os.environ.get("RAY_ADDRESS")) else 0.0


@dataclass(frozen=True)
class ClusterOptions:
    """Which Ray cluster to run on and how long to wait for it to grow (the `cluster` section of both
    InferConfig and TrainConfig; flags --address, --wait-for-capacity, --no-wait)."""

    address: str | None = None  # Ray cluster address (default: $RAY_ADDRESS or a local Ray)
    # seconds to wait for nodes; None: DEFAULT_WAIT_S when joining a cluster, else 0
    wait_for_capacity: float | None = None
    no_wait: bool = False  # never wait: fail at once when the plan does not fit what is up

    def wait_s(self) -> float:
        """Seconds to wait for capacity (wait_timeout of these options)."""
        return wait_timeout(self.address, self.wait_for_capacity, self.no_wait)


def max_resources() -> dict[str, float]:
    """The most the cluster can grow to, per resource, from its autoscaling config ({} when unknown).

    Ray's GCS holds the cluster config the autoscaler runs with (node types x max workers). A cluster
    without an autoscaler (a local Ray, `ray start` by hand) has none: {}.
    """
    try:
        from ray._private.state import state

        return {k: float(v) for k, v in (state.get_max_resources_from_cluster_config() or {}).items()}
    except Exception as e:  # noqa: BLE001 - a private API: absence only means "unknown"
        log.debug("no autoscaling config: %s", e)
        return {}


def gpus_possible(resources: ClusterResources) -> bool:
    """Can this cluster have GPUs: some are up, or its autoscaling config has GPU node types."""
    return resources.gpus >= 1 or max_resources().get("GPU", 0) >= 1


def _fmt_duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def describe_need(bundles: list[dict[str, float]]) -> str:
    """'4 GPU' when GPUs are asked for (the scarce part), else '2.5 CPU'."""
    gpus = sum(b.get("GPU", 0) for b in bundles)
    if gpus:
        return f"{gpus:g} GPU"
    return f"{sum(b.get('CPU', 0) for b in bundles):g} CPU"


def describe_up(bundles: list[dict[str, float]], resources: ClusterResources) -> str:
    up = resources.gpus if any(b.get("GPU", 0) for b in bundles) else resources.cpus
    return f"{up:g} up ({len(resources.nodes)} node(s))"


def wait_for_plan(make_plan: Callable[[ClusterResources], P], bundles: list[dict[str, float]],
                  timeout_s: float, what: str = "", report: Callable[[str], None] | None = None,
                  poll_s: float = POLL_S, report_s: float = REPORT_S) -> P:
    """`make_plan(alive resources)` as soon as it stops raising PlanError, waiting up to `timeout_s`.

    `bundles` is the minimum the plan needs (e.g. [{"CPU": 1, "GPU": 1}] * min_actors + decode CPUs),
    asked of the autoscaler as a pending placement group while waiting. `timeout_s <= 0`: fail fast
    (the PlanError propagates). Raises RetryableError when the time runs out.
    """
    report = report or (lambda line: print(line, flush=True))
    try:
        return make_plan(cluster_resources())
    except PlanError:
        if timeout_s <= 0:
            raise
    need = describe_need(bundles) + (f" ({what})" if what else "")
    start = time.monotonic()
    pg = _request(bundles)
    last = ""
    try:
        next_report = start
        while True:
            resources = cluster_resources()
            try:
                plan = make_plan(resources)
            except PlanError as e:
                last = str(e)
            else:
                report(f"capacity: {need} available after {_fmt_duration(time.monotonic() - start)}")
                return plan
            elapsed = time.monotonic() - start
            if elapsed >= timeout_s:
                raise RetryableError(
                    f"gave up after {_fmt_duration(elapsed)} waiting for {need}: "
                    f"{describe_up(bundles, resources)}; the cluster did not grow in time. Run the same "
                    f"command again later, or wait longer with --wait-for-capacity SECONDS"
                    + (f" (last check: {last})" if last else ""))
            if time.monotonic() >= next_report:
                report(f"waiting for {need}: {describe_up(bundles, resources)}, {_fmt_duration(elapsed)}"
                       f" (gives up after {_fmt_duration(timeout_s)})")
                next_report += report_s
            time.sleep(min(poll_s, max(0.05, timeout_s - elapsed)))
    finally:
        _release(pg)


def _request(bundles: list[dict[str, float]]):
    """A pending placement group: the autoscaler's signal to add nodes. None when it cannot be made."""
    from ray.util.placement_group import placement_group

    bundles = [{k: v for k, v in b.items() if v > 0} for b in bundles]
    bundles = [b for b in bundles if b]
    if not bundles:
        return None
    try:
        return placement_group(bundles, strategy="PACK", name="raysegment-capacity-request")
    except Exception as e:  # noqa: BLE001 - waiting still works without it (nodes added by hand)
        log.warning("could not ask the autoscaler for %s: %s", bundles, e)
        return None


def _release(pg) -> None:
    if pg is None:
        return
    from ray.util.placement_group import remove_placement_group

    try:
        remove_placement_group(pg)
    except Exception as e:  # noqa: BLE001 - the job goes on; Ray removes it when the driver exits anyway
        log.warning("could not remove the capacity request: %s", e)
