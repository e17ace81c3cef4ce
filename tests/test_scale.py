"""Archive scale without Ray (issue #10): the partitioned listing / resume / summary match the simple
per-input definitions they replace, the capacity wait is bounded, visible and leaves nothing pinned, and the
CLI turns a capacity timeout into one line and exit 3."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from raysegment.cluster import capacity
from raysegment.cluster.plan import ClusterResources, NodeResources
from raysegment.errors import PlanError, RetryableError
from raysegment.infer import worklist
from raysegment.outputs import results
from raysegment.outputs.results import SCHEMA, SCHEMA_VERSION, SummaryAccumulator, summarize_results


def _listing(uri: str, **kw) -> list[dict]:
    part = worklist.Partitioner(worklist.LISTING_SCHEMA, kw.pop("scratch"))
    for chunk in worklist.iter_listing(uri, chunk=7, **kw):
        part.add(chunk)
    part.close()
    rows = []
    for p in range(part.nparts):
        rows += worklist.dedupe(part.part(p)).to_pylist()
    return sorted(rows, key=lambda r: r["ordinal"])


@pytest.mark.parametrize("small", [10**6, 5])  # in memory, and spilled to partition files
def test_partitioned_listing_lists_the_folder_and_manifest(tmp_path, monkeypatch, small):
    monkeypatch.setattr(worklist, "SMALL", small)
    monkeypatch.setattr(worklist, "FLUSH_ROWS", 3)
    root = tmp_path / "archive"
    for rel in ["a.png", "b/c.dcm", "b/d/e.jpg", "b.png", "b0.png", ".hidden.png", "notes.txt", "1.2.840.5",
                "z/out/x.png"]:
        os.makedirs(root / os.path.dirname(rel), exist_ok=True)
        (root / rel).write_bytes(b"x" * len(rel))
    exclude = (str(root / "z" / "out"),)
    # The folder's inputs by full path (hidden files and the excluded output left out; notes.txt is an input:
    # its bytes decide), with their sizes (len(rel) bytes each) and stems.
    expected = [("1.2.840.5", 9, "1.2.840"), ("a.png", 5, "a"), ("b.png", 5, "b"), ("b/c.dcm", 7, "c"),
                ("b/d/e.jpg", 9, "e"), ("b0.png", 6, "b0"), ("notes.txt", 9, "notes")]
    got = _listing(str(root), exclude=exclude, scratch=str(tmp_path / "s"))
    assert ([(r["image_uri"], r["key"], r["input_size"]) for r in got]
            == [(str(root / key), key, size) for key, size, _ in expected])
    assert [r["image_id"] for r in got] == [image_id for _, _, image_id in expected]
    assert [r["image_uri"]
            for r in _listing(str(root), exclude=exclude, limit=3, scratch=str(tmp_path / "t"))] \
        == [str(root / key) for key, _, _ in expected[:3]]

    # A manifest: duplicates removed (first kept), relative entries resolved, identity columns read.
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,size,etag\narchive/a.png,1,e1\narchive/b/c.dcm,,\narchive/a.png,9,e9\n"
                        f"{root}/b.png,2,\n")
    got = _listing(str(manifest), scratch=str(tmp_path / "u"))
    assert [(r["image_uri"], r["key"], r["input_size"], r["input_etag"]) for r in got] == [
        (str(root / "a.png"), "a.png", 1, "e1"), (str(root / "b/c.dcm"), "b/c.dcm", None, None),
        (str(root / "b.png"), "b.png", 2, None)]


def test_vectorized_resume_redoes_exactly_the_changed_or_failed_inputs(tmp_path):
    cases = [  # (now: size, mtime, etag, truth), (before: model, size, mtime, etag, truth, status), redone?
        ((10, 5, None, None), ("m1", 10, 5, None, None, "ok"), False),
        ((None, None, None, None), ("m1", 10, 5, None, None, "ok"), False),  # manifest without identity
        ((10, 5, None, None), None, True),  # never done
        ((10, 5, None, None), ("m2", 10, 5, None, None, "ok"), True),  # another model
        ((11, 5, None, None), ("m1", 10, 5, None, None, "ok"), True),
        ((10, 6, None, None), ("m1", 10, 5, None, None, "ok"), True),
        ((10, 5, "e", None), ("m1", 10, 5, None, None, "ok"), True),  # etag now, none before
        ((10, 5, "e", None), ("m1", 10, 5, "e", None, "ok"), False),
        ((10, 5, None, "t.png"), ("m1", 10, 5, None, None, "ok"), True),  # now with ground truth
        ((10, 5, None, "t.png"), ("m1", 10, 5, None, "t.png", "ok"), False),
        ((10, 5, None, None), ("m1", 10, 5, None, None, "error"), True),  # errors are retried
    ]
    listing, done = [], []
    for i, (now, before, _) in enumerate(cases):
        uri = f"s3://b/{i}.png"
        listing.append({"image_uri": uri, "image_id": str(i), "key": f"{i}.png", "input_size": now[0],
                        "input_mtime_ns": now[1], "input_etag": now[2], "truth_uri": now[3], "ordinal": i})
        if before:
            done.append({"image_uri": uri, "run_id": "r1", "status": before[5], "model_id": before[0],
                         "input_size": before[1], "input_mtime_ns": before[2], "input_etag": before[3],
                         "truth_uri": before[4], "seq": i, "schema_version": SCHEMA_VERSION,
                         "calibration_id": None})
    listing_t = pa.Table.from_pylist(listing, schema=worklist.LISTING_SCHEMA)
    done_t = worklist.conform(pa.Table.from_pylist(done), worklist.INDEX_SCHEMA)
    left = {r["image_uri"] for r in worklist.todo(listing_t, worklist.latest(done_t), "m1").to_pylist()}
    expected = {f"s3://b/{i}.png" for i, (_, _, redone) in enumerate(cases) if redone}
    assert left == expected and len(expected) == 7
    # Rows of an older schema, or scored with another QC calibration, are redone too.
    older = worklist.conform(pa.Table.from_pylist([{**d, "schema_version": 1} for d in done]),
                             worklist.INDEX_SCHEMA)
    assert len(worklist.todo(listing_t, worklist.latest(older), "m1")) == len(cases)
    recalibrated = worklist.todo(listing_t, worklist.latest(done_t), "m1", calibration_id="c2")
    assert len(recalibrated) == len(cases)


def test_latest_picks_like_read_results():
    index = worklist.conform(pa.table({
        "image_uri": ["a", "a", "b", "b", "c", "c"], "run_id": ["r1", "r2", "r1", "r2", "r1", "r1"],
        "status": ["ok", "error", "error", "ok", "ok", "ok"], "lung_fraction": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        "seq": [0, 1, 2, 3, 4, 5]}), worklist.INDEX_SCHEMA)
    got = {r["image_uri"]: (r["run_id"], r["lung_fraction"]) for r in worklist.latest(index).to_pylist()}
    # a duplicate within a run: the later
    assert got == {"a": ("r1", 0.1), "b": ("r2", 0.4), "c": ("r1", 0.6)}


def _results_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ok = rng.random(n) > 0.1
    cols = {
        "image_uri": [f"s3://b/{i:06d}.png" for i in range(n)],
        "status": ["ok" if o else "error" for o in ok],
        "error_stage": [None if o else ("read" if i % 2 else "decode") for i, o in enumerate(ok)],
        "error_type": [None if o else "E" for o in ok], "error": [None if o else "bad" for o in ok],
        "qc_flag": [bool(o and i % 5 == 0) for i, o in enumerate(ok)],
        "qc_reasons": [["small"] if o and i % 5 == 0 else [] for i, o in enumerate(ok)],
        "lung_fraction": rng.random(n), "mean_confidence": rng.random(n),
        "truth_uri": [f"t{i}" if i % 3 else None for i in range(n)],
        "dice": [float(x) if i % 3 else None for i, x in enumerate(rng.random(n))],
        "tp": [int(x) for x in rng.integers(0, 100, n)], "fp": [1] * n, "fn": [2] * n,
    }
    return pa.table({k: pa.array(v, SCHEMA.field(k).type) for k, v in cols.items()})


def test_summary_from_partitions_equals_whole_table(monkeypatch):
    table = _results_table(3000)
    whole = summarize_results(table)
    assert whole["images"] == 3000 and whole["ok"] + whole["errors"] == 3000
    acc = SummaryAccumulator()
    parts = worklist.partition_of(table.column("image_uri"), 8)
    for p in range(8):
        acc.add(table.filter(pa.array(parts == p)))
    merged = acc.result()
    for key in ("images", "ok", "errors", "errors_by_reason", "qc_flagged", "qc_reasons"):
        assert merged[key] == whole[key], key
    assert merged["metrics"]["n_scored"] == whole["metrics"]["n_scored"] > 0
    assert merged["metrics"]["micro_dice"] == pytest.approx(whole["metrics"]["micro_dice"])
    for name in ("lung_fraction", "mean_confidence"):
        assert merged[name] == pytest.approx(whole[name])  # exact: below SAMPLE rows
        ok = table.filter(pa.compute.equal(table.column("status"), "ok"))
        assert whole[name]["median"] == pytest.approx(float(np.median(ok.column(name).to_numpy())))

    # Beyond SAMPLE rows: counts, mean, min, max stay exact; the median comes from a uniform sample.
    monkeypatch.setattr(results, "SAMPLE", 200)
    small = SummaryAccumulator()
    for p in range(8):
        small.add(table.filter(pa.array(parts == p)))
    approx = small.result()
    assert approx["ok"] == whole["ok"] and approx["lung_fraction"]["n"] == whole["lung_fraction"]["n"]
    assert approx["lung_fraction"]["mean"] == pytest.approx(whole["lung_fraction"]["mean"])
    assert approx["lung_fraction"]["max"] == whole["lung_fraction"]["max"]
    assert abs(approx["lung_fraction"]["median"] - whole["lung_fraction"]["median"]) < 0.1


# --- capacity -----------------------------------------------------------------------------------------

def test_wait_timeout_defaults_and_flags(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert capacity.wait_timeout(None) == 0  # a local Ray cannot grow: fail fast
    assert capacity.wait_timeout("10.0.0.1:6379") == capacity.DEFAULT_WAIT_S  # joining a cluster: wait
    assert capacity.wait_timeout("10.0.0.1:6379", no_wait=True) == 0
    assert capacity.wait_timeout(None, wait_for_capacity=30) == 30
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert capacity.wait_timeout(None) == capacity.DEFAULT_WAIT_S


@pytest.fixture
def fake_cluster(monkeypatch):
    """cluster_resources() grows by one 2-CPU node per call after `grow_after` calls; records requests."""
    state = {"calls": 0, "grow_after": 3, "requested": [], "released": []}

    def resources():
        state["calls"] += 1
        n = max(0, state["calls"] - state["grow_after"])
        return ClusterResources((NodeResources(0, 0), *[NodeResources(2, 0)] * n))

    monkeypatch.setattr(capacity, "cluster_resources", resources)
    monkeypatch.setattr(capacity, "_request", lambda b: state["requested"].append(b) or "pg")
    monkeypatch.setattr(capacity, "_release", lambda pg: state["released"].append(pg))
    return state


def _needs_two_cpus(res: ClusterResources) -> str:
    if res.cpus < 2:
        raise PlanError(f"need 2 CPU, have {res.cpus:g}")
    return f"plan on {res.cpus:g} CPU"


def test_wait_for_plan_reports_then_returns_and_releases(fake_cluster):
    lines = []
    plan = capacity.wait_for_plan(_needs_two_cpus, [{"CPU": 1}, {"CPU": 1}], 30, report=lines.append,
                                  poll_s=0.01, report_s=0)
    assert plan == "plan on 2 CPU"
    assert lines[0].startswith("waiting for 2 CPU: 0 up (1 node(s)), 0m00s")
    assert lines[-1].startswith("capacity: 2 CPU available after")
    assert fake_cluster["requested"] == [[{"CPU": 1}, {"CPU": 1}]] and fake_cluster["released"] == ["pg"]


def test_wait_for_plan_gives_up_retryable_and_releases(fake_cluster):
    fake_cluster["grow_after"] = 10**9
    with pytest.raises(RetryableError, match=r"gave up after 0m0\ds waiting for 4 GPU: 0 up"):
        capacity.wait_for_plan(_needs_two_cpus, [{"CPU": 1, "GPU": 4}], 0.2, report=lambda _: None,
                               poll_s=0.01)
    assert fake_cluster["released"] == ["pg"]  # nothing left pinned
    with pytest.raises(PlanError):  # no wait: fails at once, asks for nothing
        capacity.wait_for_plan(_needs_two_cpus, [{"CPU": 2}], 0, report=lambda _: None)
    assert len(fake_cluster["requested"]) == 1


def test_elastic_infer_plan_takes_gpus_from_the_user_not_the_snapshot(monkeypatch):
    from raysegment.infer.config import ScalingSection
    from raysegment.infer.sizing import elastic_plan

    monkeypatch.setattr(capacity, "max_resources", dict)
    nothing = ClusterResources((NodeResources(0, 0),))
    make_plan, bundles = elastic_plan(ScalingSection(use_gpu=True, max_actors=4), nothing)
    assert bundles == [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0}]
    with pytest.raises(PlanError):
        make_plan(nothing)
    up = make_plan(ClusterResources((NodeResources(0, 0), NodeResources(4, 1))))
    assert (up.num_actors, up.pool_max, up.use_gpu) == (1, 4, True)
    assert up.describe().startswith("1-4 inference actor(s) x (1 GPU + 1 CPU)")
    # Unsaid: the autoscaling config decides (GPU node types there), not the empty snapshot.
    monkeypatch.setattr(capacity, "max_resources", lambda: {"CPU": 48.0, "GPU": 8.0})
    make_plan, bundles = elastic_plan(ScalingSection(), nothing)
    assert bundles[0] == {"CPU": 1.0, "GPU": 1.0}
    assert make_plan(ClusterResources((NodeResources(4, 1),))).pool_max == 8


def test_cli_capacity_timeout_is_one_line_exit_3(monkeypatch, capsys):
    from raysegment.cli import main
    from raysegment.infer import pipeline

    def never(config):
        raise RetryableError("gave up after 0m05s waiting for 1 CPU: 0 up (1 node(s))")

    monkeypatch.setattr(pipeline, "run_inference", never)
    assert main(["infer", "--input", "x", "--checkpoint", "y", "--output", "z",
                 "--wait-for-capacity", "5"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["raysegment infer: error: gave up after 0m05s waiting for 1 CPU: 0 up (1 node(s))"]


def test_image_reads_are_one_get_each_retried_and_bounded(s3_endpoint):
    """Bulk reads (storage.get_object): one GET per object and no HEAD (latency counts once), the S3
    client's retries, a missing object as FileNotFoundError, a stalled endpoint as an error in bounded
    time."""
    import time

    from raysegment.io import storage
    from raysegment.testing.faulty_proxy import FaultyProxy

    bucket = s3_endpoint.create_bucket("scale-get")
    s3_endpoint.client().put_object(Bucket=bucket[5:], Key="a/x.png", Body=b"pixels")
    with FaultyProxy("127.0.0.1", s3_endpoint.port) as proxy:
        options = storage.S3Options(endpoint_url=proxy.url, max_attempts=3, connect_timeout_s=1,
                                    request_timeout_s=1)
        assert storage.get_object(f"{bucket}/a/x.png", options) == b"pixels"
        assert [h.split(b" ", 1)[0] for h in proxy.heads] == [b"GET"]
        proxy.fail_next(2, mode="http500")
        assert storage.get_object(f"{bucket}/a/x.png", options) == b"pixels" and proxy.faults == 2
        with pytest.raises(FileNotFoundError, match="no such object"):
            storage.get_object(f"{bucket}/a/missing.png", options)
        proxy.fail_next(10**6, mode="stall")
        start = time.monotonic()
        with pytest.raises(Exception) as info:
            storage.get_object(f"{bucket}/a/x.png", options)
        assert time.monotonic() - start < 20
        assert s3_endpoint.secret_access_key not in str(info.value)
        proxy.fail_next(0)
        proxy.delay_ms = 200  # latency mode: every request held, none failed
        start = time.monotonic()
        assert storage.get_object(f"{bucket}/a/x.png", options) == b"pixels"
        assert time.monotonic() - start >= 0.2
