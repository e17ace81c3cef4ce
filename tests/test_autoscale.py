"""Jobs on a cluster that grows and shrinks (issue #10), on ONE loopback cluster shared by the module.

The head advertises 0 CPU (as cluster.yaml's does) and starts without worker nodes. The test plays the
autoscaler: it adds a worker node when the job says it is waiting, and kills one mid-inference like a
spot interruption. Drivers are `raysegment infer/train --address ...` processes joining the cluster.
0. --dry-run on the empty cluster: counts and what a run would wait for, nothing written;
1. no node ever comes, short timeout: one line, exit 3, within the timeout plus a few seconds;
2. infer waits with a visible message, a node is added, every input gets one row;
3. train likewise (after the node of 2. is gone again);
4. a worker node is SIGKILLed when the first Parquet file is written: the job completes, every input
   exactly once in read_results (Ray retries the lost tasks, Ray Data restarts the actor elsewhere).
Ray's health checks are shortened so a dead node is noticed in ~2 s. Everything stops by PID.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from raysegment.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
HEALTH = {"RAY_health_check_initial_delay_ms": "0", "RAY_health_check_period_ms": "500",
          "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(head_cpus=0, worker_cpus=2, worker_nodes=0, extra_env=HEALTH)
    try:
        yield c.start()
    finally:
        c.cleanup()
        assert not c._processes(), "cluster processes left behind"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    import torch

    from raysegment.data.preprocess import PreprocessConfig
    from raysegment.data.synth import write_dataset
    from raysegment.model.checkpoint import ModelSpec, save_checkpoint
    from raysegment.model.unet import UNet, UNetConfig

    root = tmp_path_factory.mktemp("autoscale")
    write_dataset(str(root / "data"), n=12, size=64, seed=5, layout="generic")
    write_dataset(str(root / "many"), n=60, size=64, seed=6, layout="generic")
    torch.manual_seed(0)
    spec = ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=64))
    save_checkpoint(str(root / "ckpt"), UNet.from_config(spec.model), spec)
    # ~150 ms a film on one core (the one above: ~1 ms), so that inference of the 60 films outlasts the
    # test's reaction to the first Parquet file even on a loaded 2-core box: the node kill lands mid-run.
    slow = ModelSpec(UNetConfig(base_channels=32, depth=4), PreprocessConfig(size=192))
    save_checkpoint(str(root / "slow_ckpt"), UNet.from_config(slow.model), slow)
    return {"root": root, "data": str(root / "data"), "cxr": str(root / "data" / "cxr"),
            "many": str(root / "many" / "cxr"), "ckpt": str(root / "ckpt"),
            "slow_ckpt": str(root / "slow_ckpt")}


class Driver:
    """A `raysegment ...` process joining the cluster; its output collected line by line."""

    def __init__(self, cluster: LocalCluster, args: list[str], cwd: str) -> None:
        self.lines: list[str] = []
        self.started = time.monotonic()
        self.first_wait: float | None = None
        self.proc = subprocess.Popen([sys.executable, "-m", "raysegment", *args,
                                      "--address", cluster.address],
                                     env=cluster.env(), cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        self.waiting = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "waiting for" in line and not self.waiting.is_set():
                self.first_wait = time.monotonic()
                self.waiting.set()

    def wait(self, timeout_s: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=10)
        return rc

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def _infer(cluster, data, out: str, *extra: str, source: str = "cxr", checkpoint: str = "ckpt") -> Driver:
    return Driver(cluster, ["infer", "--input", data[source], "--checkpoint", data[checkpoint],
                            "--output", out, "--batch-size", "4", *extra], str(data["root"]))


def test_dry_run_lists_resumes_plans_and_runs_nothing(cluster, data):
    out = str(data["root"] / "out_dry")
    driver = _infer(cluster, data, out, "--dry-run")
    assert driver.wait(180) == 0, driver.output[-3000:]
    line = next(x for x in driver.lines if x.startswith("dry run:"))
    assert ("would process 12 of 12 inputs" in line
            and "a run would wait up to 900 s for 1.5 CPU" in line), line
    assert not os.path.exists(out)  # nothing written, no model run


def test_no_capacity_ever_is_one_line_exit_3_in_time(cluster, data):
    driver = _infer(cluster, data, str(data["root"] / "out_never"), "--wait-for-capacity", "6")
    rc = driver.wait(180)
    assert rc == 3, driver.output[-3000:]
    assert "Traceback" not in driver.output
    errors = [x for x in driver.lines if x.startswith("raysegment infer: error:")]
    assert (len(errors) == 1 and "gave up after 0m0" in errors[0]
            and "waiting for 1.5 CPU" in errors[0]), errors
    assert driver.first_wait is not None
    print(f"gave up {time.monotonic() - driver.first_wait:.1f} s "
          "after the first 'waiting for' line (timeout 6 s)")
    assert time.monotonic() - driver.first_wait < 6 + 10
    assert _capacity_requests(cluster) == []  # nothing left pinned


def _capacity_requests(cluster: LocalCluster) -> list[dict]:
    """Placement groups named raysegment-capacity-request not removed (state API of the dashboard)."""
    import json
    import urllib.request

    with open(cluster.token_path) as f:
        token = f.read().strip()
    request = urllib.request.Request(f"{cluster.dashboard_url}/api/v0/placement_groups?limit=1000&detail=1",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        rows = json.loads(response.read())["data"]["result"]["result"]
    return [r for r in rows if r.get("name") == "raysegment-capacity-request" and r.get("state") != "REMOVED"]


def test_infer_waits_for_a_node_then_completes(cluster, data):
    from raysegment.outputs.results import read_results

    out = str(data["root"] / "out_wait")
    driver = _infer(cluster, data, out, "--wait-for-capacity", "240")
    try:
        assert driver.waiting.wait(180), driver.output[-3000:]
        cluster.add_worker(cpus=2)  # the autoscaler's job
    finally:
        rc = driver.wait(300)
    assert rc == 0, driver.output[-4000:]
    assert any(x.startswith("waiting for 1.5 CPU") for x in driver.lines), driver.output[-3000:]
    assert any(x.startswith("capacity: ") for x in driver.lines)
    rows = read_results(out, columns=["image_uri", "status"])
    assert rows.num_rows == 12 and set(rows.column("status").to_pylist()) == {"ok"}
    assert _capacity_requests(cluster) == []


def test_train_waits_for_a_node_then_completes(cluster, data):
    for node in sorted(glob.glob(os.path.join(cluster.root, "w*"))):  # back to the head alone
        cluster.kill_node(node)
    cluster.wait_for_nodes(1, 60, exactly=True)
    driver = Driver(cluster, ["train", "--config", os.path.join(ROOT, "configs", "train-small.yaml"),
                              "--data", data["data"], "--storage", str(data["root"] / "runs"),
                              "--name", "grow", "--epochs", "1", "--wait-for-capacity", "240"],
                    str(data["root"]))
    try:
        assert driver.waiting.wait(180), driver.output[-3000:]
        cluster.add_worker(cpus=2)
    finally:
        rc = driver.wait(400)
    assert rc == 0, driver.output[-4000:]
    assert any(x.startswith("waiting for 1.5 CPU (2 training worker(s))")
               for x in driver.lines), driver.output
    assert os.path.exists(data["root"] / "runs" / "grow" / "best" / "model.safetensors")


def test_node_killed_mid_inference_every_input_exactly_once(cluster, data):
    from raysegment.outputs.results import read_results

    for node in sorted(glob.glob(os.path.join(cluster.root, "w*"))):
        cluster.kill_node(node)
    cluster.wait_for_nodes(1, 60, exactly=True)
    # Two fresh 3-CPU worker nodes: 2 actors x 2 CPU (one per node) + 2 CPU for the stage tasks; after the
    # kill the survivor still has its actor and 1 CPU for stage tasks.
    survivor, victim = cluster.add_worker(cpus=3), cluster.add_worker(cpus=3)
    out = str(data["root"] / "out_kill")
    driver = _infer(cluster, data, out, "--rows-per-file", "1", "--batch-size", "1", "--max-actors", "2",
                    "--no-wait", source="many", checkpoint="slow_ckpt")
    killed = 0
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.proc.poll() is None:
            if glob.glob(os.path.join(out, "runs", "*", "*.parquet")):  # the event: first file written
                killed = cluster.kill_node(victim)
                at_kill = read_results(out, columns=["image_uri"], all_rows=True).num_rows
                break
            time.sleep(0.05)
    finally:
        rc = driver.wait(400)
    assert killed, "the job ended before the first Parquet file appeared: " + driver.output[-3000:]
    assert rc == 0, driver.output[-4000:]
    rows = read_results(out, columns=["image_uri", "status"])
    assert rows.num_rows == 60 and set(rows.column("status").to_pylist()) == {"ok"}
    assert (sorted(rows.column("image_uri").to_pylist())
            == sorted(glob.glob(os.path.join(data["many"], "*.png"))))
    every = read_results(out, columns=["image_uri"], all_rows=True)
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    # Rows written twice by retried tasks are resolved on read and counted in the summary.
    assert summary["missing"] == 0 and summary["duplicates_resolved"] == every.num_rows - 60, summary
    print(f"killed {killed} processes of worker node {victim} (survivor {survivor}) after the first file, "
          f"{at_kill} rows written then; {every.num_rows} rows written for 60 inputs")
    assert at_kill < 60  # the kill came mid-inference
