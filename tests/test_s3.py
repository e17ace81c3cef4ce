"""S3 end to end against a live HTTP endpoint (moto_server on 127.0.0.1, the `s3_endpoint` fixture).

Storage, datasets and checkpoints over s3://; endpoint by flag or env; anonymous (unsigned) requests;
transient failures retried by the S3 client's own retry strategy (a fault-injecting proxy in front of moto);
persistent failures end in an error within bounded time; Ray workers reach the same endpoint; credentials
never appear in errors.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
import uuid

import pytest

from raysegment.io import storage
from raysegment.testing.faulty_proxy import FaultyProxy


def _bucket(s3_endpoint, prefix: str = "rs") -> str:
    """A fresh bucket per test, so tests never see each other's objects."""
    return s3_endpoint.create_bucket(f"{prefix}-{uuid.uuid4().hex[:12]}")


def _fast(endpoint: str, **kw) -> storage.S3Options:
    """Options with short timeouts for fault tests (seconds)."""
    return storage.S3Options(endpoint_url=endpoint,
                             **{"connect_timeout_s": 1.0, "request_timeout_s": 2.0, **kw})


def _upload_tree(s3_endpoint, local_dir: str, uri: str) -> int:
    """boto3-upload a local folder to an s3:// prefix (independent of the code under test)."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    client, count = s3_endpoint.client(), 0
    for root, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(root, name)
            key = "/".join(p for p in (prefix, os.path.relpath(path, local_dir).replace(os.sep, "/")) if p)
            client.upload_file(path, bucket, key)
            count += 1
    return count


def test_s3_storage_round_trip(s3_endpoint, tmp_path):
    root = _bucket(s3_endpoint)
    storage.write_bytes(f"{root}/a/b/one.bin", b"hello")
    storage.write_text(f"{root}/a/two.txt", "world")
    assert storage.read_bytes(f"{root}/a/b/one.bin") == b"hello"
    assert storage.read_text(f"{root}/a/two.txt") == "world"
    assert storage.exists(f"{root}/a/two.txt") and storage.is_dir(f"{root}/a")
    assert not storage.exists(f"{root}/x")
    entries = storage.list_files(f"{root}/a")
    assert [(e.uri, e.size) for e in entries] == [(f"{root}/a/b/one.bin", 5), (f"{root}/a/two.txt", 5)]
    assert [e.uri for e in storage.list_files(f"{root}/a", recursive=False)] == [f"{root}/a/two.txt"]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        storage.list_files(f"{root}/missing")

    # Folder copies both ways (checkpoints and run outputs use these).
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"\x00" * 1000)
    (src / "c.json").write_text("{}")
    storage.upload_dir(str(src), f"{root}/copy")
    back = _download_dir(f"{root}/copy", str(tmp_path / "back"))
    assert (tmp_path / "back" / "sub" / "w.bin").read_bytes() == b"\x00" * 1000
    assert back == str(tmp_path / "back")
    storage.delete_dir(f"{root}/copy")
    assert not storage.exists(f"{root}/copy")

    # What the endpoint really holds (checked with boto3, not with the code under test).
    keys = {o["Key"] for o in s3_endpoint.client().list_objects_v2(Bucket=root[5:])["Contents"]}
    assert keys == {"a/b/one.bin", "a/two.txt"}


def test_s3_dataset_discovery_and_checkpoint(s3_endpoint, tmp_path):
    import torch

    from raysegment import load_model
    from raysegment.data.datasets import discover, load_pair, load_split_dataset, write_manifest
    from raysegment.data.preprocess import PreprocessConfig
    from raysegment.data.synth import write_dataset
    from raysegment.model.checkpoint import ModelSpec, save_checkpoint
    from raysegment.model.unet import UNet, UNetConfig

    root = _bucket(s3_endpoint)
    for layout in ("generic", "montgomery"):
        write_dataset(str(tmp_path / layout), n=6, size=64, seed=3, layout=layout)
        _upload_tree(s3_endpoint, str(tmp_path / layout), f"{root}/{layout}")
        found = discover(f"{root}/{layout}")
        assert found.layout == layout and len(found.pairs) == 6, found.report()
        assert all(p.image_uri.startswith(f"{root}/{layout}/") for p in found.pairs)
        image, mask = load_pair(found.pairs[0])
        assert image.shape == (64, 64) and mask.any()

    # A manifest written to s3 is readable back as a dataset, with the same split.
    data = load_split_dataset(f"{root}/generic")
    write_manifest(data, f"{root}/runs/manifest.csv")
    again = load_split_dataset(f"{root}/runs/manifest.csv")
    assert again.splits == data.splits

    torch.manual_seed(0)
    spec = ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=32), 0.5)
    model_id = save_checkpoint(f"{root}/ckpt/best", UNet(base_channels=4, depth=2), spec, {"epoch": 1})
    loaded = load_model(f"{root}/ckpt/best")
    assert loaded.model_id == model_id and loaded.spec == spec


def test_endpoint_from_flag_wins_and_is_exported(s3_endpoint, monkeypatch):
    from raysegment.cli.common import add_s3_arguments, apply_s3_arguments

    monkeypatch.setattr(storage, "_default_s3", storage.S3Options())  # restored after the test
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # a dead endpoint: the flag must win
    monkeypatch.setenv(storage.ANONYMOUS_ENV, "0")  # so the value the flag exports is undone afterwards
    parser = argparse.ArgumentParser()
    add_s3_arguments(parser)
    args = parser.parse_args(["--s3-endpoint", s3_endpoint.url])
    options = apply_s3_arguments(args)
    assert options.endpoint_url == s3_endpoint.url and not options.anonymous
    # Exported, so cluster.connect ships it to Ray workers.
    assert os.environ["AWS_ENDPOINT_URL_S3"] == s3_endpoint.url
    assert storage.worker_env()["AWS_ENDPOINT_URL_S3"] == s3_endpoint.url
    root = _bucket(s3_endpoint)
    storage.write_text(f"{root}/flag.txt", "via flag")
    assert storage.read_text(f"{root}/flag.txt") == "via flag"

    assert apply_s3_arguments(parser.parse_args(["--s3-anonymous"])).anonymous
    assert os.environ[storage.ANONYMOUS_ENV] == "1"
    with pytest.raises(SystemExit, match="http"):
        apply_s3_arguments(parser.parse_args(["--s3-endpoint", "minio:9000"]))


def test_endpoint_from_environment(s3_endpoint, monkeypatch):
    monkeypatch.setattr(storage, "_default_s3", storage.S3Options())
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint.url)  # the generic variable also counts
    assert storage.default_s3_options().endpoint_url == s3_endpoint.url
    root = _bucket(s3_endpoint)
    storage.write_text(f"{root}/env.txt", "via env")
    assert storage.read_text(f"{root}/env.txt") == "via env"


def test_anonymous_requests_are_unsigned(s3_endpoint, monkeypatch):
    root = _bucket(s3_endpoint)
    # A public object, as in an open-data bucket (the endpoint refuses unsigned reads of private ones).
    s3_endpoint.client().put_object(Bucket=root[5:], Key="public/x.txt", Body=b"open data", ACL="public-read")
    with FaultyProxy("127.0.0.1", s3_endpoint.port) as proxy:
        signed = _fast(proxy.url, max_attempts=1)
        assert storage.read_bytes(f"{root}/public/x.txt", signed) == b"open data"
        assert any(b"authorization: aws4-hmac-sha256" in h.lower() for h in proxy.heads), proxy.heads
        proxy.heads.clear()
        # No credentials at all: anonymous mode must not even look for them.
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        monkeypatch.setenv(storage.ANONYMOUS_ENV, "1")
        anonymous = storage.S3Options(endpoint_url=proxy.url, max_attempts=1).resolved()
        assert anonymous.anonymous
        assert storage.read_bytes(f"{root}/public/x.txt", anonymous) == b"open data"
        assert proxy.heads and not any(b"authorization:" in h.lower() for h in proxy.heads), proxy.heads
        # ...and the endpoint really checks: an unsigned read of a private object is refused.
        s3_endpoint.client().put_object(Bucket=root[5:], Key="private/y.txt", Body=b"closed")
        with pytest.raises(OSError, match="ACCESS_DENIED"):
            storage.read_bytes(f"{root}/private/y.txt", anonymous)


@pytest.mark.parametrize("mode", ["http500", "drop"])
def test_transient_failures_are_retried(s3_endpoint, mode):
    root = _bucket(s3_endpoint)
    with FaultyProxy("127.0.0.1", s3_endpoint.port, fail_first=2, mode=mode) as proxy:
        options = _fast(proxy.url, max_attempts=5)
        storage.write_bytes(f"{root}/r/{mode}.bin", b"x" * 2048, options)  # the first 2 attempts fail
        assert proxy.faults == 2
        proxy.fail_next(2)
        assert storage.read_bytes(f"{root}/r/{mode}.bin", options) == b"x" * 2048
        assert proxy.faults == 4 and proxy.requests > 4


@pytest.mark.parametrize("mode", ["http500", "drop", "stall"])
def test_persistent_failure_is_an_error_not_a_hang(s3_endpoint, mode):
    root = _bucket(s3_endpoint)
    s3_endpoint.client().put_object(Bucket=root[5:], Key="k.bin", Body=b"data")
    with FaultyProxy("127.0.0.1", s3_endpoint.port, fail_first=10**6, mode=mode) as proxy:
        options = _fast(proxy.url, max_attempts=3)
        with pytest.raises(OSError) as info:
            storage.read_bytes(f"{root}/k.bin", options)
    # Bounded by attempts, not by a clock: exactly max_attempts requests, each ended by an answer, a closed
    # connection or the 2 s request timeout (stall), so it can never hang. A retried stall is allowed.
    if mode == "stall":
        assert 1 <= proxy.requests <= 3 and proxy.faults == proxy.requests
    else:
        assert proxy.requests == proxy.faults == 3  # retried, not given up at once, and not forever
    message = str(info.value)
    assert s3_endpoint.secret_access_key not in message and s3_endpoint.access_key_id not in message


def test_dead_endpoint_fails_fast(s3_endpoint):
    from raysegment.io.local_s3 import free_port

    # Nothing listens: every attempt is refused at once and the error names the connection (no clock
    # assert: the attempts are bounded by max_attempts, see test_persistent_failure_is_an_error_not_a_hang).
    with pytest.raises(OSError, match="(?i)connect"):
        storage.read_bytes("s3://nobody-home/x", _fast(f"http://127.0.0.1:{free_port()}", max_attempts=2))


def test_worker_runtime_env_has_endpoint_never_credentials(s3_endpoint, monkeypatch):
    from raysegment.cluster.plan import _worker_runtime_env

    env = _worker_runtime_env()["env_vars"]
    assert env["AWS_ENDPOINT_URL_S3"] == s3_endpoint.url and env["AWS_REGION"] == "us-east-1"
    assert s3_endpoint.secret_access_key not in json.dumps(env) and "AWS_ACCESS_KEY_ID" not in env
    # Inside a submitted job, keys the job's runtime_env already sets are not repeated (ray.init would
    # refuse the conflict).
    job = {"runtime_env": {"working_dir": "x", "env_vars": {"AWS_ENDPOINT_URL_S3": s3_endpoint.url}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert "AWS_ENDPOINT_URL_S3" not in (_worker_runtime_env() or {}).get("env_vars", {})


def test_ray_workers_reach_the_endpoint(ray_local, s3_endpoint):
    """Workers were started with the driver's S3 env: a task reads and writes s3:// with default options."""
    root = _bucket(s3_endpoint)
    storage.write_text(f"{root}/from-driver.txt", "hi")

    @ray_local.remote
    def round_trip(uri: str) -> tuple[str, str]:
        from raysegment.io import storage as st

        st.write_text(uri + ".copy", st.read_text(uri) + " back")
        return st.read_text(uri + ".copy"), os.environ.get("AWS_ENDPOINT_URL_S3", "")

    text, endpoint = ray_local.get(round_trip.remote(f"{root}/from-driver.txt"), timeout=120)
    assert text == "hi back" and endpoint == s3_endpoint.url


# --- training and bulk inference over s3 ----------------------------------------------------------------


def _all_objects(s3_endpoint, bucket: str) -> dict[str, bytes]:
    client = s3_endpoint.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _local_files(*roots: str) -> dict[str, bytes]:
    out = {}
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    with open(path, "rb") as f:
                        out[path] = f.read()
                except OSError:  # sockets, files removed meanwhile
                    pass
    return out


def _train(data: str, storage_path: str, name: str, epochs: int):
    from raysegment.train.config import load_config
    from raysegment.train.driver import train

    config = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "train-small.yaml"), {
        "data.path": data, "run.storage_path": storage_path, "run.name": name, "optim.epochs": epochs,
        "model.base_channels": 8, "model.depth": 3, "preprocess.size": 64, "optim.early_stopping_patience": 5,
        "run.evaluate_test": False,  # saves time; the test split is exercised in test_train.py
        "scaling.num_workers": 1,  # one torch process to start on the 2-core CI; 2 workers: test_cluster_jobs
    })
    return train(config)


def test_train_infer_resume_over_s3_and_no_credentials_anywhere(ray_local, s3_endpoint, tmp_path, capfd):
    """Train from s3 with run storage in s3, infer s3 -> s3 with --masks-out while one input's reads keep
    failing (error row, bounded time), resume both, read the results back, and grep every byte written
    (bucket objects, local files, Ray's session logs, captured output) for the credentials."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    import raysegment
    from raysegment.data.synth import write_dataset
    from raysegment.infer.config import InferConfig, IOSection, ModelSection, ScalingSection
    from raysegment.infer.pipeline import run_inference
    from raysegment.train.loop import load_train_state

    root = _bucket(s3_endpoint, "e2e")
    bucket = root[5:]
    n = 14  # >= 2 train images per worker and >= 1 val after the 80/10/10 split; small for the 2-core CI
    write_dataset(str(tmp_path / "data"), n=n, size=64, seed=11, layout="generic")
    assert _upload_tree(s3_endpoint, str(tmp_path / "data"), f"{root}/data") == 2 * n

    marks = [("start", time.monotonic())]
    # Train 1 epoch: data, run dir and checkpoints all in s3.
    first = _train(f"{root}/data", f"{root}/runs", "r1", epochs=1)
    assert first.run_dir == f"{root}/runs/r1" and [r["epoch"] for r in first.history] == [1]
    for name in ("best/model.safetensors", "best/config.json", "checkpoint_epoch_0001/train_state.pt",
                 "metrics.csv", "config.yaml", "split_manifest.csv"):
        assert storage.exists(f"{root}/runs/r1/{name}"), name
    assert raysegment.load_model(first.best_dir).spec.preprocess.size == 64

    marks.append(("train", time.monotonic()))
    # Resume training against s3: same name, 2 epochs in total -> only epoch 2 runs.
    second = _train(f"{root}/data", f"{root}/runs", "r1", epochs=2)
    assert [r["epoch"] for r in second.history] == [1, 2]
    # (Re)starts recorded in the checkpoint: epoch 1 (first run), then epoch 2 (resumed from s3).
    assert load_train_state(f"{root}/runs/r1/checkpoint_epoch_0002")["state"]["starts"] == [1, 2]

    # Inference s3 -> s3 through a proxy that fails every request for one image: that image becomes an
    # error row after the retries (short timeouts), the other 19 are ok.
    marks.append(("train resume", time.monotonic()))
    common = {"io": IOSection(input=f"{root}/data/cxr", output=f"{root}/out", masks_out=f"{root}/masks"),
              "model": ModelSection(checkpoint=second.best_dir),
              "scaling": ScalingSection(num_actors=1)}  # one torch import, not two, on 2 cores
    poisoned = "SYN_0003"
    with FaultyProxy("127.0.0.1", s3_endpoint.port, fail_first=10**6, match=poisoned) as proxy:
        options = _fast(proxy.url, max_attempts=3)
        summary = run_inference(InferConfig(**common, s3=options))
    assert proxy.faults >= 3  # 3 attempts for the image read, at least
    assert (summary["ok"], summary["errors"], summary["missing"]) == (n - 1, 1, 0), summary

    marks.append(("infer with faults", time.monotonic()))
    # Resume: only the error row is retried (and now succeeds); nothing is redone or duplicated.
    again = run_inference(InferConfig(**common, s3=_fast(s3_endpoint.url)))
    assert (again["processed"], again["skipped_resume"], again["ok"], again["errors"]) == (1, n - 1, n,
                                                                                           0), again

    marks.append(("infer resume", time.monotonic()))
    # Read back with plain pyarrow over S3 (every row of both runs) and with raysegment.read_results.
    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{s3_endpoint.port}", scheme="http",
                           region="us-east-1")
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(f"{bucket}/out/runs", recursive=True))
             if i.path.endswith(".parquet")]  # each run folder also holds run.json and summary.json
    history = pads.dataset(files, filesystem=fs, format="parquet").to_table(columns=["image_uri", "status"])
    assert history.num_rows == n + 1 and history.column("status").to_pylist().count("error") == 1
    results = raysegment.read_results(f"{root}/out")
    assert results.num_rows == n and set(results.column("status").to_pylist()) == {"ok"}
    error_rows = [r for r in history.to_pylist() if r["status"] == "error"]
    assert poisoned in error_rows[0]["image_uri"]
    masks = [k for k in _all_objects(s3_endpoint, bucket) if k.startswith("masks/")]
    assert len(masks) == n

    # No credential anywhere: objects (configs, manifests, Parquet incl. its metadata, run.json), local
    # files, Ray's logs, captured stdout/stderr.
    secrets = (s3_endpoint.secret_access_key.encode(), s3_endpoint.access_key_id.encode())
    objects = _all_objects(s3_endpoint, bucket)
    parquet = [k for k in objects if k.endswith(".parquet")]
    assert parquet and all(
        b"SECRET" not in repr(pq.read_schema(f"{bucket}/{k}",
                                             filesystem=fs).metadata).encode() for k in parquet)
    session_dir = ray_local._private.worker._global_node.get_session_dir_path()
    local = _local_files(str(tmp_path), os.path.join(session_dir, "logs"))
    out, err = capfd.readouterr()
    with capfd.disabled():  # where the time goes, for the CI log
        print("\ns3 end-to-end durations (s): " + ", ".join(
            f"{name} {t - p:.1f}" for (_, p), (name, t) in itertools.pairwise(marks)))
    leaks = [name for name, data in [*objects.items(), *local.items(), ("stdout", out.encode()),
                                     ("stderr", err.encode())] if any(s in data for s in secrets)]
    assert not leaks, f"credentials found in: {leaks}"
    assert len(objects) > 3 * n and "runs/r1/config.yaml" in objects


def test_training_with_a_failing_endpoint_fails_clearly(ray_local, s3_endpoint, monkeypatch, capsys):
    """`raysegment train` against an endpoint whose every request fails: the preflight check (before Ray)
    gives up after its retries with a readable, credential-free one-line error; no hang."""
    from raysegment.cli import main

    monkeypatch.setattr(storage, "_default_s3", storage.S3Options())
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint.url)  # restored after the flag overwrites it
    with FaultyProxy("127.0.0.1", s3_endpoint.port, fail_first=10**6, mode="http500") as proxy:
        rc = main(["train", "--config", "configs/train-small.yaml", "--data", "s3://no-such-data/xrays",
                   "--storage", "s3://no-such-data/runs", "--name", "doomed", "--epochs", "1",
                   "--s3-endpoint", proxy.url])
    err = capsys.readouterr().err
    assert rc != 0 and "raysegment train" in err, (rc, err)
    # Retried before giving up, and given up: every request failed, so the count is what was attempted.
    assert 2 <= proxy.faults == proxy.requests
    assert s3_endpoint.secret_access_key not in err and s3_endpoint.access_key_id not in err


def _download_dir(uri: str, local_dir: str) -> str:
    """Copy a folder or prefix to a local folder (the reverse of storage.upload_dir); returns local_dir."""
    for entry in storage.list_files(uri):
        dest = os.path.join(local_dir, entry.uri[len(uri):].lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(storage.read_bytes(entry.uri))
    return local_dir
