"""A real multi-node Ray cluster on loopback, started and driven with the `ray` CLI, token auth ON.

Two `ray start` nodes (a head and a worker) on this machine, each its own raylet, object store and
dashboard agent, joined through the head's GCS exactly as on separate machines; jobs go through the
Ray Jobs API (`ray job submit`) of the head's dashboard. Used by tests/test_cluster_jobs.py.

Things this harness has to get right (each learnt from Ray 2.60's source, see docs/operations.md):

- Token authentication. `ray start --head` turns token auth on when RAY_AUTH_MODE=token (or, with the
  mode unset, when a token file already exists); the token comes from RAY_AUTH_TOKEN, else the file at
  RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. Every process that talks to the cluster (the worker
  node's `ray start`, `ray job submit`, the job's driver) needs RAY_AUTH_MODE=token AND the token: a CLI
  with the mode unset sends no token and gets "401 Unauthorized: Missing authentication token". We use
  a fresh token file per cluster (RAY_AUTH_TOKEN_PATH) so ~/.ray/auth_token is never touched.
- Loopback only. The `ray` CLI treats "127.0.0.1"/"localhost" as "this machine" and replaces it by the
  machine's outward IP (services.resolve_ip_for_localhost), in `ray start --node-ip-address`,
  `--address` and `ray status --address` alike. (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 would keep
  127.0.0.1 but makes `ray start --address` refuse to add a worker node.) So the nodes use 127.0.0.2,
  another address of the loopback interface that Ray does not rewrite; the dashboard / Jobs API listens
  on 127.0.0.1. Every address a client uses is loopback. (Some Ray processes still bind their gRPC
  ports on all interfaces whatever the node IP; token auth guards them.)
- Stopping. `ray stop` kills every Ray process on the machine by name (other users' clusters, other
  test sessions); `stop()` kills only the processes whose command line names this cluster's own temp
  dir, plus their descendants (workers, job drivers), by PID.
- One temp dir per node, as on separate machines: nodes sharing one also share their runtime_env
  folders, and one node's cleanup deleted the working_dir another node's job driver was running in.
- Ports. Every port is chosen free, so the cluster does not collide with a local `ray.init()` or
  another cluster (two nodes on one IP would otherwise both want the default dashboard-agent port).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from raysegment.io.local_s3 import free_port

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _psutil():
    """psutil: Ray vendors it (ray/thirdparty_files, put on sys.path by `import ray`)."""
    import importlib

    try:
        return importlib.import_module("psutil")
    except ImportError:
        importlib.import_module("ray")  # must come first: it adds the vendored copy to sys.path
        return importlib.import_module("psutil")


@dataclass
class JobResult:
    submission_id: str
    status: str  # SUCCEEDED | FAILED | STOPPED | TIMEOUT
    output: str  # what `ray job submit --wait` printed (the job's logs included)
    seconds: float


@dataclass
class LocalCluster:
    """Head + `worker_nodes` worker nodes on 127.0.0.1. Use as a context manager (stops in a finally)."""

    head_cpus: int = 2
    worker_cpus: int = 2
    worker_nodes: int = 1
    object_store_mb: int = 256  # per node; small, the machine is shared
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. AWS credentials, as a node's own env
    unset_env: tuple[str, ...] = ()  # variables of this process the cluster must NOT inherit
    root: str = ""  # temp dir; short, because Ray's unix socket paths must stay < 108 bytes
    gcs_port: int = 0
    dashboard_port: int = 0
    token_path: str = ""

    node_ip: str = "127.0.0.2"  # loopback; see "Loopback only" in the module doc

    @property
    def address(self) -> str:
        return f"{self.node_ip}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def ray_bin(self) -> str:
        """The `ray` CLI next to this interpreter: jobs then run with this same Python env."""
        return os.path.join(os.path.dirname(sys.executable), "ray")

    def env(self) -> dict[str, str]:
        """Environment for every `ray` CLI call against this cluster (and inherited by its processes)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_",
                                    "RAY_JOB_CONFIG")) and k not in self.unset_env}
        env.update(self.extra_env)
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=self.token_path,
            RAY_USAGE_STATS_ENABLED="0",
            # `python` in a job's entrypoint is this interpreter (offline: no pip installs on the cluster).
            PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        )
        return env

    def _run(self, args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
        return subprocess.run([self.ray_bin, *args], check=False, env=self.env(), capture_output=True,
                              text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)

    def _agent_ports(self) -> list[str]:
        return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                "--min-worker-port=0", "--max-worker-port=0",  # 0: OS-assigned, never colliding
                f"--object-store-memory={self.object_store_mb * 1024 * 1024}", "--disable-usage-stats"]

    def start(self, timeout_s: float = 120.0) -> LocalCluster:
        self.root = self.root or tempfile.mkdtemp(prefix="rsc-", dir="/tmp")
        self.token_path = os.path.join(self.root, "auth_token")
        with open(os.open(self.token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        head = self._run(
            ["start", "--head", f"--node-ip-address={self.node_ip}", f"--port={self.gcs_port}",
             f"--num-cpus={self.head_cpus}", "--num-gpus=0", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
             f"--ray-client-server-port={free_port()}", f"--temp-dir={os.path.join(self.root, 'head')}",
             *self._agent_ports()],
            timeout_s)
        if head.returncode != 0:
            raise RuntimeError(f"ray start --head failed ({head.returncode}):\n{head.stdout}\n{head.stderr}")
        for _ in range(self.worker_nodes):
            self.add_worker(timeout_s=timeout_s, wait=False)
        self.wait_for_nodes(1 + self.worker_nodes, timeout_s)
        return self

    def add_worker(self, cpus: int | None = None, timeout_s: float = 120.0, wait: bool = True) -> str:
        """Start one more worker node (what an autoscaler does); returns its temp dir (its identity for
        kill_node). `wait`: until the GCS lists it alive."""
        self._started = getattr(self, "_started", 0) + 1
        temp_dir = os.path.join(self.root, f"w{self._started - 1}")
        alive = self.alive_nodes() if wait else 0
        # Its own temp dir, as on a separate machine: nodes sharing one would share (and garbage-collect)
        # each other's runtime_env folders, e.g. delete the working_dir a job's driver runs in.
        worker = self._run(
            ["start", f"--address={self.address}", f"--node-ip-address={self.node_ip}",
             f"--num-cpus={self.worker_cpus if cpus is None else cpus}", "--num-gpus=0",
             f"--temp-dir={temp_dir}", *self._agent_ports()], timeout_s)
        if worker.returncode != 0:
            raise RuntimeError(f"ray start (worker) failed ({worker.returncode}):\n{worker.stdout}\n"
                               f"{worker.stderr}")
        if wait:
            self.wait_for_nodes(alive + 1, timeout_s)
        return temp_dir

    def kill_node(self, temp_dir: str) -> int:
        """SIGKILL one worker node (raylet, its agents and workers), as a spot interruption would; by PID.
        Returns how many processes were killed."""
        procs = self._processes(temp_dir)
        _kill(procs)
        return len(procs)

    def alive_nodes(self) -> int:
        """Alive nodes as `ray status` reports them (0 when it cannot tell)."""
        text = self.status()
        return text.split("Active:", 1)[-1].split("Pending:", 1)[0].count("node_") if "Active:" in text else 0

    def status(self, timeout_s: float = 60.0) -> str:
        """`ray status` (needs the token like every other client)."""
        out = self._run(["status", f"--address={self.address}"], timeout_s)
        return out.stdout + out.stderr

    def wait_for_nodes(self, n: int, timeout_s: float, exactly: bool = False) -> None:
        """Until `ray status` lists at least (`exactly`: exactly) n alive nodes."""
        deadline, text = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            text = self.status()
            active = text.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in text else ""
            if active.count("node_") == n or (active.count("node_") > n and not exactly):
                return
            time.sleep(1)
        raise TimeoutError(f"{n} nodes not up within {timeout_s:g} s; last `ray status`:\n{text}")

    def submit(self, entrypoint: list[str], working_dir: str, runtime_env: dict | None = None,
               timeout_s: float = 300.0) -> JobResult:
        """`ray job submit --wait` and its final status. On timeout the job is stopped (never a hang)."""
        sid = f"rs-{uuid.uuid4().hex[:10]}"
        args = ["job", "submit", f"--address={self.dashboard_url}", f"--submission-id={sid}",
                f"--working-dir={working_dir}"]
        if runtime_env:
            args.append(f"--runtime-env-json={json.dumps(runtime_env)}")
        start = time.monotonic()
        try:
            out = self._run([*args, "--", *entrypoint], timeout_s)
            output = out.stdout + out.stderr
        except subprocess.TimeoutExpired as e:
            self._run(["job", "stop", f"--address={self.dashboard_url}", sid], 60)
            output = f"{e.stdout or ''}{e.stderr or ''}"
            return JobResult(sid, "TIMEOUT", output, time.monotonic() - start)
        state = str(self.job_info(sid).get("status", "UNKNOWN"))
        return JobResult(sid, state, output, time.monotonic() - start)

    def job_info(self, submission_id: str) -> dict:
        """GET /api/jobs/<id> of the Jobs REST API, authenticated with the cluster token as a bearer token
        (what the CLI and JobSubmissionClient send when RAY_AUTH_MODE=token)."""
        import urllib.request

        with open(self.token_path) as f:
            token = f.read().strip()
        request = urllib.request.Request(f"{self.dashboard_url}/api/jobs/{submission_id}",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def _processes(self, root: str | None = None) -> list:
        """This cluster's processes (or one node's, by its temp dir): those naming the dir, and all their
        descendants."""
        psutil = _psutil()

        root = root or self.root
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(root in part for part in (proc.info["cmdline"] or [])):
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
            except psutil.Error:
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> int:
        """Kill this cluster's processes by PID (never `ray stop`, which kills every Ray on the machine).

        Returns how many processes were signalled.
        """
        psutil = _psutil()

        if not self.root:
            return 0
        signalled: set[int] = set()
        for _ in range(3):  # again, for anything a dying process spawned meanwhile
            procs = self._processes()
            if not procs:
                break
            signalled.update(p.pid for p in procs)
            for proc in procs:
                try:
                    proc.send_signal(signal.SIGTERM)
                except psutil.Error:
                    pass
            _, alive = psutil.wait_procs(procs, timeout=5)
            _kill(alive)  # e.g. gcs_server can ignore SIGTERM
        return len(signalled)

    def cleanup(self) -> None:
        """Stop, then remove the temp dir (logs included)."""
        self.stop()
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):  # -> LocalCluster
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill(procs: list) -> None:
    """SIGKILL these processes (by PID, those still there) and wait for them."""
    psutil = _psutil()
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)
