"""Shared fixtures. One local Ray per test session (ray.init costs seconds); synthetic data made once."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

SHARED_MONTGOMERY = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "montgomery_512")


@pytest.fixture(autouse=True)
def _restore_s3_settings():
    """`--s3-endpoint` / `--s3-anonymous` (cli.common.apply_s3_arguments) export themselves to os.environ and
    set process-wide S3 options, on purpose (Ray workers inherit them). In a test process that would leak
    into every later test: restore both after each test."""
    from raysegment.io import storage

    names = (*storage.WORKER_ENV_VARS, "AWS_ENDPOINT_URL_S3", storage.ANONYMOUS_ENV)
    saved_env, saved_options = {k: os.environ.get(k) for k in names}, storage._default_s3
    yield
    storage.set_default_s3_options(saved_options)
    for name, value in saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def ray_local(request):
    """A local 2-CPU Ray for the whole session (CI has 2 cores; plans must fit in them)."""
    import ray

    from raysegment.cluster.plan import connect

    # Ray's workers take the environment Ray starts with. When this session also runs S3 tests, start
    # the test S3 endpoint (and set its AWS_* env) first, so every worker talks to it too.
    if any("s3_endpoint" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("s3_endpoint")

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    connect(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_generic(tmp_path_factory) -> str:
    """40 synthetic 128x128 X-rays in the generic layout (cxr/ + masks/)."""
    from raysegment.data.synth import write_dataset

    out = str(tmp_path_factory.mktemp("synth_generic"))
    write_dataset(out, n=40, size=128, seed=1, layout="generic")
    return out


@pytest.fixture(scope="session")
def synth_montgomery(tmp_path_factory) -> str:
    """20 synthetic 128x128 X-rays in the NLM Montgomery layout (CXR_png/ + ManualMask/{left,right}Mask/)."""
    from raysegment.data.synth import write_dataset

    out = str(tmp_path_factory.mktemp("synth_montgomery"))
    write_dataset(out, n=20, size=128, seed=2, layout="montgomery")
    return out


@pytest.fixture(scope="session")
def montgomery_512() -> str:
    """The real Montgomery set from ../shared/data, or skip (a user's fresh clone has no shared/)."""
    path = os.path.abspath(SHARED_MONTGOMERY)
    if not os.path.isdir(path):
        pytest.skip(f"real Montgomery data not present at {path}")
    return path


# Distinctive fake credentials for the test S3 endpoint: tests grep every output for them to prove that
# credentials never reach logs, errors, saved configs or Parquet metadata.
S3_ACCESS_KEY_ID = "AKIARSTESTQ7Z2X9W4KD"
S3_SECRET_ACCESS_KEY = "rs-test-SECRET-8f3c1d77e0b94a52-never-log-me"


@dataclass(frozen=True)
class S3Endpoint:
    url: str  # http://127.0.0.1:PORT
    port: int
    access_key_id: str
    secret_access_key: str
    log_path: str  # moto's own log

    def client(self):
        """A boto3 S3 client for this endpoint (for test setup and checks)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=self.access_key_id,
                            aws_secret_access_key=self.secret_access_key)

    def create_bucket(self, name: str) -> str:
        """Create (if needed) and return `s3://name`."""
        client = self.client()
        if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real HTTP S3 endpoint (moto_server on 127.0.0.1, free port) for the session.

    Sets AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL_S3 / AWS_REGION for the session (and
    undoes them at the end), so the product reaches it through the standard AWS chain, as in production.
    """
    from raysegment.io.local_s3 import start_moto

    server = start_moto(str(tmp_path_factory.mktemp("moto") / "moto.log"))
    env = pytest.MonkeyPatch()
    try:
        env.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY_ID)
        env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_ACCESS_KEY)
        env.setenv("AWS_ENDPOINT_URL_S3", server.url)
        env.setenv("AWS_REGION", "us-east-1")
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probes (slow offline)
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "RAYSEGMENT_S3_ANONYMOUS"):
            env.delenv(name, raising=False)
        yield S3Endpoint(server.url, server.port, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, server.log_path)
    finally:
        env.undo()
        server.stop()


# Property tests (hypothesis) are deterministic here: a fixed derivation of examples (derandomize), no
# example database on disk, no per-example deadline (the 2-core CI box is shared and noisy).
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("raysegment", derandomize=True, database=None, deadline=None, max_examples=60,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "raysegment"))
except ImportError:  # hypothesis is a dev extra; the property tests importorskip it
    pass
