"""A real multi-node Ray cluster on this machine, jobs submitted with `ray job submit`, token auth ON.

`ray start --head` + `ray start --address` (two raylets, loopback only, separate temp dir), then:
1. a trivial job: tasks land on both nodes, the job sees RAY_AUTH_MODE=token, and the Jobs API refuses
   requests without the token (401) or with a wrong one;
2. jobs/train.py and jobs/infer.py against the test S3 endpoint, the way a real cluster works: data, run
   dir, checkpoints and results in s3:// (nodes share no disk), credentials in the nodes' own environment
   (as an instance profile would provide), the endpoint via --s3-endpoint (train: cluster.connect must
   ship it to the workers of both nodes) or via the job's runtime_env (infer). The checkpoint must load and
   the Parquet output must have one row per image.
The cluster is stopped in a finally by PID (see raysegment/testing/local_cluster.py: never `ray stop`).
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from raysegment.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# What `--working-dir .` must not upload (Ray also honours .gitignore, which covers .venv and runs/).
EXCLUDES = [".git", ".venv", "runs", "demo_out", "**/__pycache__", ".pytest_cache", ".ruff_cache"]

TRIVIAL_JOB = '''
import os, time, ray
ray.init()
@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
def where():
    time.sleep(0.5)
    return ray.get_runtime_context().get_node_id()
nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
used = set(ray.get([where.remote() for _ in range(8)]))
ips = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]})
print(f"RESULT nodes={len(nodes)} used={len(used & nodes)} ips={ips} auth={os.environ.get('RAY_AUTH_MODE')}")
'''


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """Head (2 logical CPUs) + 1 worker node (2 logical CPUs) on loopback, stopped at the end."""
    node_env = {"AWS_ACCESS_KEY_ID": s3_endpoint.access_key_id,
                "AWS_SECRET_ACCESS_KEY": s3_endpoint.secret_access_key,
                "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    c = LocalCluster(head_cpus=2, worker_cpus=2, worker_nodes=1, extra_env=node_env,
                     unset_env=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"))  # jobs must bring the endpoint
    try:
        yield c.start()
    finally:
        c.cleanup()
        assert not c._processes(), "cluster processes left behind"


def test_trivial_job_uses_both_nodes_with_token_auth(cluster, tmp_path):
    import urllib.error
    import urllib.request

    (tmp_path / "job.py").write_text(TRIVIAL_JOB)
    result = cluster.submit(["python", "job.py"], str(tmp_path), timeout_s=180)
    assert result.status == "SUCCEEDED", result.output[-3000:]
    line = next(x for x in result.output.splitlines() if x.startswith("RESULT"))
    assert line.startswith("RESULT nodes=2 used=2 ") and "auth=token" in line, line
    assert "127.0.0." in line and "192." not in line  # loopback only

    # The Jobs API refuses a request without the token, and one with a wrong token.
    url = f"{cluster.dashboard_url}/api/jobs/{result.submission_id}"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(url, timeout=30)
    assert missing.value.code == 401
    wrong = urllib.request.Request(url, headers={"Authorization": "Bearer " + "0" * 64})
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(wrong, timeout=30)
    assert bad.value.code == 403
    assert cluster.job_info(result.submission_id)["status"] == "SUCCEEDED"  # with the token: fine


def test_train_and_infer_jobs_over_s3(cluster, s3_endpoint, tmp_path):
    import raysegment
    from raysegment.data.synth import write_dataset

    bucket = s3_endpoint.create_bucket(f"mn-{uuid.uuid4().hex[:10]}")
    write_dataset(str(tmp_path / "data"), n=20, size=64, seed=21, layout="generic")
    client = s3_endpoint.client()
    for folder, _, files in os.walk(tmp_path / "data"):
        for name in files:
            path = os.path.join(folder, name)
            client.upload_file(path, bucket[5:], "data/" + os.path.relpath(path, tmp_path / "data"))

    started = time.monotonic()
    # scaling.cpus_per_worker=1.5: no node has room for two such workers, so training spans both nodes.
    # The endpoint comes by flag: the nodes do not have it, so the data-loading tasks and training workers
    # on both nodes can only reach S3 if cluster.connect ships it to them (runtime_env of the driver).
    train = cluster.submit(
        ["python", "jobs/train.py", "--config", "configs/train-small.yaml", "--data", f"{bucket}/data",
         "--storage", f"{bucket}/runs", "--name", "mn", "--epochs", "1", "--set",
         "scaling.cpus_per_worker=1.5",
         "--s3-endpoint", s3_endpoint.url],
        ROOT, {"excludes": EXCLUDES}, timeout_s=300)
    assert train.status == "SUCCEEDED", train.output[-5000:]
    assert "2 worker(s) x (1.5 CPU)" in train.output
    loaded = raysegment.load_model(f"{bucket}/runs/mn/best")  # the checkpoint exists and loads
    assert loaded.config["epoch"] == 1 and loaded.spec.preprocess.size == 64

    # The endpoint comes with the job's runtime_env (as for a MinIO deployment): the driver must not add
    # the same variable again (ray.init refuses to merge a key twice).
    infer = cluster.submit(
        ["python", "jobs/infer.py", "--input", f"{bucket}/data/cxr", "--checkpoint", f"{bucket}/runs/mn/best",
         "--output", f"{bucket}/out", "--masks-out", f"{bucket}/masks",
         "--num-actors", "2"],  # fewer torch imports on the 2-core CI box; Ray Data spreads them
        ROOT, {"env_vars": {"AWS_ENDPOINT_URL_S3": s3_endpoint.url}, "excludes": EXCLUDES}, timeout_s=300)
    assert infer.status == "SUCCEEDED", infer.output[-5000:]
    results = raysegment.read_results(f"{bucket}/out", columns=["image_uri", "status", "mask_uri"])
    assert results.num_rows == 20 and set(results.column("status").to_pylist()) == {"ok"}
    assert all(u.startswith(f"{bucket}/masks/") for u in results.column("mask_uri").to_pylist())
    print(f"train job {train.seconds:.0f} s, infer job {infer.seconds:.0f} s, "
          f"both {time.monotonic() - started:.0f} s")
    for line in (train.output + infer.output).splitlines():
        if line.startswith(("run mn", "data:", "best:", "raysegment infer")) or "epoch   1/1" in line:
            print(line)
    # Credentials live in the nodes' environment only: never in what the jobs printed.
    for job in (train, infer):
        assert s3_endpoint.secret_access_key not in job.output and s3_endpoint.access_key_id not in job.output
