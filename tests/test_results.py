"""Results units (no Ray): the output layout, deduplicated reads (which row wins), what resume may skip, and
the run summary computed from a hand-written table with known answers."""

from __future__ import annotations

import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from worklist_helpers import done_identities, skipped

from raysegment.outputs.results import (
    IDENTITY_COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    SUMMARY_COLUMNS,
    read_results,
    result_files,
    run_uri,
    runs_uri,
    summarize_results,
)

RUN1, RUN2, RUN3 = "20250101T000000Z-aaaaaa", "20250102T000000Z-bbbbbb", "20250103T000000Z-cccccc"


def _write(root, run_id: str, rows: list[dict], name: str = "part-0.parquet") -> None:
    rows = [{"run_id": run_id, **r} for r in rows]
    table = pa.Table.from_pylist(rows, schema=pa.schema([SCHEMA.field(c) for c in rows[0]]))
    os.makedirs(os.path.join(root, "runs", run_id), exist_ok=True)
    pq.write_table(table, os.path.join(root, "runs", run_id, name))


def test_layout_uris():
    assert runs_uri("/out") == "/out/runs" and run_uri("/out", RUN1) == f"/out/runs/{RUN1}"
    assert run_uri("s3://b/out/", RUN1) == f"s3://b/out/runs/{RUN1}"


def test_result_files_lists_only_parquet_sorted(tmp_path):
    assert result_files(str(tmp_path)) == []  # nothing yet: no runs/ folder
    _write(tmp_path, RUN2, [{"image_uri": "a", "status": "ok"}])
    _write(tmp_path, RUN1, [{"image_uri": "a", "status": "ok"}], "x.parquet")
    (tmp_path / "runs" / RUN1 / "run.json").write_text("{}")
    assert result_files(str(tmp_path)) == [str(tmp_path / "runs" / RUN1 / "x.parquet"),
                                           str(tmp_path / "runs" / RUN2 / "part-0.parquet")]


def test_latest_ok_wins_then_latest_error_then_later_row(tmp_path):
    _write(tmp_path, RUN1, [{"image_uri": "a", "status": "ok", "lung_area_px": 1},
                            {"image_uri": "b", "status": "error", "lung_area_px": 2},
                            {"image_uri": "c", "status": "ok", "lung_area_px": 3},
                            {"image_uri": "d", "status": "error", "lung_area_px": 4}])
    _write(tmp_path, RUN2, [{"image_uri": "a", "status": "error", "lung_area_px": 5},  # an older ok beats it
                            {"image_uri": "b", "status": "ok", "lung_area_px": 6},
                            {"image_uri": "c", "status": "ok", "lung_area_px": 7},  # newer ok beats older ok
                            {"image_uri": "d", "status": "error", "lung_area_px": 8},  # newer error wins
                            {"image_uri": "e", "status": "ok", "lung_area_px": 9},
                            {"image_uri": "e", "status": "ok", "lung_area_px": 10}])  # same run: later row
    got = {r["image_uri"]: (r["status"], r["run_id"], r["lung_area_px"])
           for r in read_results(str(tmp_path)).to_pylist()}
    assert got == {"a": ("ok", RUN1, 1), "b": ("ok", RUN2, 6), "c": ("ok", RUN2, 7), "d": ("error", RUN2, 8),
                   "e": ("ok", RUN2, 10)}
    table = read_results(str(tmp_path))
    assert table.column("image_uri").to_pylist() == ["a", "b", "c", "d", "e"]  # the output's row order
    assert read_results(str(tmp_path), all_rows=True).num_rows == 10


def test_read_results_columns_and_empty_output(tmp_path):
    empty = read_results(str(tmp_path / "nothing"))
    assert empty.num_rows == 0 and empty.schema.equals(SCHEMA)
    narrow = read_results(str(tmp_path / "nothing"), columns=["lung_area_px"])
    assert narrow.num_rows == 0 and narrow.column_names == ["image_uri", "run_id", "status", "lung_area_px"]
    _write(tmp_path, RUN1, [{"image_uri": "a", "status": "ok", "lung_area_px": 1, "dice": 0.5}])
    _write(tmp_path, RUN2, [{"image_uri": "a", "status": "error", "lung_area_px": 2, "dice": None}])
    picked = read_results(str(tmp_path), columns=["dice", "lung_area_px", "not_a_column"])
    assert picked.column_names == ["dice", "lung_area_px"] and picked.to_pylist() == [{"dice": 0.5,
                                                                                      "lung_area_px": 1}]
    history = read_results(str(tmp_path), columns=["lung_area_px"], all_rows=True)
    assert (history.column_names == ["lung_area_px"]
            and sorted(history.column("lung_area_px").to_pylist()) == [1, 2])


def test_torn_file_is_skipped_not_fatal(tmp_path, caplog):
    _write(tmp_path, RUN1, [{"image_uri": "a", "status": "ok"}])
    (tmp_path / "runs" / RUN2).mkdir()
    (tmp_path / "runs" / RUN2 / "torn.parquet").write_bytes(b"PAR1 torn")  # a writer killed mid-file
    with caplog.at_level("WARNING"):
        table = read_results(str(tmp_path))
    assert table.to_pylist()[0]["image_uri"] == "a" and table.num_rows == 1
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith("skipping unreadable result file "
                              f"{tmp_path / 'runs' / RUN2 / 'torn.parquet'}: ")
    assert "Parquet" in message  # the reason follows the file name


def test_runs_with_different_columns_are_merged(tmp_path):
    """An older run (or schema version) without some columns still reads together with newer runs."""
    _write(tmp_path, RUN1, [{"image_uri": "a", "status": "ok", "lung_area_px": 1}])
    _write(tmp_path, RUN2, [{"image_uri": "b", "status": "ok", "lung_area_px": 2, "dice": 0.5}])
    got = {r["image_uri"]: (r["lung_area_px"], r["dice"]) for r in read_results(str(tmp_path)).to_pylist()}
    assert got == {"a": (1, None), "b": (2, 0.5)}


def test_reads_go_through_the_storage_layer(tmp_path, monkeypatch):
    """Results are read with the filesystem storage.filesystem returns (as for s3://), never by local path."""
    import pyarrow.fs as pafs

    from raysegment.io import storage

    _write(tmp_path, RUN1, [{"image_uri": "a", "status": "ok", "lung_area_px": 1}])
    sub = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    monkeypatch.setattr(storage, "filesystem", lambda uri, s3=None: (sub, uri.removeprefix("mem://").strip("/")))
    monkeypatch.chdir(tmp_path / "runs")  # so a path read without that filesystem cannot be found by luck
    table = read_results("mem://", columns=["lung_area_px"])
    assert table.to_pylist() == [{"lung_area_px": 1}]
    assert done_identities("mem://") == {"a": {c: None for c in IDENTITY_COLUMNS}}


def test_resume_index_keeps_only_ok_rows_with_their_identity(tmp_path):
    _write(tmp_path, RUN1, [
        {"image_uri": "a", "status": "ok", "model_id": "m1", "input_size": 10, "input_mtime_ns": 5,
         "input_etag": None, "truth_uri": "t/a.png"},
        {"image_uri": "b", "status": "error", "model_id": "m1", "input_size": 11, "input_mtime_ns": 6,
         "input_etag": None, "truth_uri": None},
    ])
    assert done_identities(str(tmp_path)) == {"a": {"model_id": "m1", "calibration_id": None,
                                                "schema_version": None, "input_size": 10, "input_mtime_ns": 5,
                                                "input_etag": None, "truth_uri": "t/a.png",
                                                "image_format": None, "inversion_corrected": None,
                                                "skip_reason": None}}
    assert set(done_identities(str(tmp_path))["a"]) == set(IDENTITY_COLUMNS)
    assert done_identities(str(tmp_path / "none")) == {}


def test_resume_compares_everything_known():
    before = {"model_id": "m1", "input_size": 10, "input_mtime_ns": 5, "input_etag": '"e1"', "truth_uri": "t",
              "schema_version": SCHEMA_VERSION, "calibration_id": None}
    assert skipped(before, "m1", 10, 5, '"e1"', "t")
    assert skipped(before, "m1", None, None, None, "t")  # nothing known now: trust the earlier row
    assert not skipped(before, "m1", 10, 5, '"e2"', "t")  # S3 object replaced: new ETag
    assert not skipped(before, "m1", 10, 5, '"e1"', None)  # ground truth removed
    assert not skipped(before, "m1", 10, 5, '"e1"', "t2")  # another truth file
    assert not skipped({**before, "model_id": None}, "m1", 10, 5, '"e1"', "t")
    assert not skipped(None, "m1", None, None, None, None)


def _row(uri: str, status: str = "ok", **kw) -> dict:
    row = {c: None for c in ("image_uri", *SUMMARY_COLUMNS)}
    row.update({"image_uri": uri, "status": status, "qc_flag": False, "qc_reasons": [], **kw})
    return row


def test_summarize_results_known_answers():
    rows = [
        _row("/d/a.png", lung_fraction=0.2, mean_confidence=0.9, truth_uri="t/a", dice=0.8, iou=0.6,
             precision=1.0, recall=0.5, hd95=2.0, hd95_mm=None, tp=8, fp=0, fn=4),
        _row("/d/b.png", lung_fraction=0.4, mean_confidence=0.7, qc_flag=True, qc_reasons=["low_confidence"],
             truth_uri="t/b", dice=0.4, iou=0.25, precision=0.5, recall=0.5, hd95=None, hd95_mm=None, tp=2,
             fp=2, fn=2),
        _row("/d/c.png", lung_fraction=0.9, mean_confidence=None, qc_flag=True,
             qc_reasons=["lung_fraction_high", "low_confidence"], truth_uri="t/c", truth_error="mask is 1x1"),
        _row("/d/d.png", lung_fraction=0.3, mean_confidence=0.8),
        _row("/d/bad.png", "error", error_stage="decode", error_type="DecodeError",
             error="bad.png: truncated"),
        _row("/d/gone.png", "error", error_stage="read", error_type="FileNotFoundError",
             error="no such file"),
        _row("/d/x.png", "error", error_stage="decode", error_type="DecodeError", error=None),
    ]
    s = summarize_results(pa.Table.from_pylist(rows), examples=2)
    assert (s["images"], s["ok"], s["errors"], s["qc_flagged"]) == (7, 4, 3, 2)
    assert s["errors_by_reason"] == {"decode/DecodeError": 2, "read/FileNotFoundError": 1}
    # most common first
    assert list(s["errors_by_reason"]) == ["decode/DecodeError", "read/FileNotFoundError"]
    assert s["error_examples"] == ["bad.png: truncated", "gone.png: no such file"]  # the name once
    assert s["qc_reasons"] == {"low_confidence": 2, "lung_fraction_high": 1}
    assert s["lung_fraction"]["mean"] == pytest.approx(0.45) and s["lung_fraction"]["n"] == 4
    assert s["mean_confidence"]["n"] == 3 and s["mean_confidence"]["mean"] == pytest.approx(0.8)
    m = s["metrics"]
    assert (m["n_scored"], m["n_without_truth"], m["truth_errors"]) == (2, 1, 1)
    assert m["micro_dice"] == pytest.approx(2 * 10 / (2 * 10 + 2 + 6))
    assert m["dice"]["mean"] == pytest.approx(0.6) and m["dice"]["n"] == 2 and m["dice"]["min"] == 0.4
    assert (m["iou"]["max"] == 0.6 and m["precision"]["median"] == pytest.approx(0.75)
            and m["recall"]["sd"] == 0)
    assert m["hd95"]["n"] == 1 and m["hd95"]["mean"] == 2.0
    assert m["hd95_mm"]["n"] == 0 and math.isnan(m["hd95_mm"]["mean"])
    assert summarize_results(pa.Table.from_pylist(rows), examples=5)["error_examples"][2] == "x.png: "


def test_summarize_results_default_keeps_five_error_examples():
    rows = [_row(f"/d/{i}.png", "error", error_stage="read", error_type="OSError", error="gone")
            for i in range(7)]
    s = summarize_results(pa.Table.from_pylist(rows))
    assert (s["error_examples"] == [f"{i}.png: gone" for i in range(5)]
            and s["errors_by_reason"] == {"read/OSError": 7})


def test_summarize_results_without_any_truth_has_no_metrics():
    s = summarize_results(pa.Table.from_pylist([_row("a.png", lung_fraction=0.3, mean_confidence=0.9)]))
    assert "metrics" not in s and s["errors_by_reason"] == {} and s["error_examples"] == []
    assert s["qc_reasons"] == {} and s["qc_flagged"] == 0
    # A truth that exists but could not be scored still reports the metrics section (with 0 scored).
    s = summarize_results(pa.Table.from_pylist([_row("a.png", truth_uri="t", truth_error="unreadable")]))
    assert (s["metrics"]["n_scored"] == 0 and s["metrics"]["truth_errors"] == 1
            and s["metrics"]["micro_dice"] == 1.0)


# --- SummaryAccumulator / _Stat: partitions merged, hand-computed answers -----------------------------


def _nan_stat() -> dict:
    return {"mean": math.nan, "sd": math.nan, "median": math.nan, "min": math.nan, "max": math.nan, "n": 0}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) if isinstance(a[k], float) and math.isnan(a[k])
        else a[k] == pytest.approx(b[k]) for k in a)


def test_accumulator_merges_partitions_exactly():
    from raysegment.outputs.results import SummaryAccumulator

    part1 = [
        _row("/d/a.png", lung_fraction=0.2, mean_confidence=0.9, qc_notes=["n1"], quality_score=0.5,
             truth_uri="t/a", dice=0.8, iou=0.6, precision=1.0, recall=0.5, hd95=2.0, hd95_mm=1.0,
             tp=8, fp=0, fn=4),
        _row("/d/b.png", "error", error_stage="decode", error_type="DecodeError", error="b.png: bad"),
        _row("/d/c.png", lung_fraction=0.4, qc_flag=True, qc_reasons=["low_quality_score"], qc_notes=["n1"],
             quality_score=0.1),
    ]
    part2 = [
        _row("/d/e.png", "error", error_stage="read", error_type="OSError", error="gone"),
        _row("/d/f.png", lung_fraction=0.9, mean_confidence=0.7, qc_flag=True,
             qc_reasons=["low_quality_score", "x"], qc_notes=["n2"], quality_score=0.3,
             truth_uri="t/f", dice=0.4, iou=0.25, precision=0.5, recall=0.5, hd95=4.0, hd95_mm=None,
             tp=2, fp=2, fn=2),
        _row("/d/g.png", "error", error_stage="decode", error_type="DecodeError", error="g broke"),
        _row("/d/h.png", lung_fraction=float("nan"), truth_uri="t/h", truth_error="bad truth"),
    ]
    acc = SummaryAccumulator(examples=2)
    acc.add(pa.Table.from_pylist(part1))
    acc.add(pa.Table.from_pylist(part1[:0], schema=pa.Table.from_pylist(part1).schema))  # empty: no-op
    acc.add(pa.Table.from_pylist(part2))
    s = acc.result()
    assert (s["images"], s["ok"], s["errors"], s["qc_flagged"]) == (7, 4, 3, 2)
    assert s["errors_by_reason"] == {"decode/DecodeError": 2, "read/OSError": 1}
    assert s["error_examples"] == ["b.png: bad", "e.png: gone"]  # the first two over both partitions
    assert s["qc_reasons"] == {"low_quality_score": 2, "x": 1}
    assert list(s["qc_reasons"]) == ["low_quality_score", "x"]
    assert s["qc_notes"] == {"n1": 2, "n2": 1}
    assert (s["quality_flagged"], s["quality_scored"]) == (2, 3)
    # lung_fraction 0.2, 0.4, 0.9 (NaN left out): mean 0.5, squared deviations .09 + .01 + .16 = .26
    assert _same(s["lung_fraction"],
                 {"mean": 0.5, "sd": math.sqrt(0.13), "median": 0.4, "min": 0.2, "max": 0.9, "n": 3})
    assert _same(s["mean_confidence"],
                 {"mean": 0.8, "sd": math.sqrt(0.02), "median": 0.8, "min": 0.7, "max": 0.9, "n": 2})
    assert _same(s["quality_score"], {"mean": 0.3, "sd": 0.2, "median": 0.3, "min": 0.1, "max": 0.5, "n": 3})
    m = s["metrics"]
    assert (m["n_scored"], m["n_without_truth"], m["truth_errors"]) == (2, 1, 1)
    assert m["micro_dice"] == pytest.approx(2 * 10 / (2 * 10 + 2 + 6))
    assert _same(m["dice"],
                 {"mean": 0.6, "sd": math.sqrt(0.08), "median": 0.6, "min": 0.4, "max": 0.8, "n": 2})
    assert _same(m["hd95"],
                 {"mean": 3.0, "sd": math.sqrt(2.0), "median": 3.0, "min": 2.0, "max": 4.0, "n": 2})
    assert _same(m["hd95_mm"], {"mean": 1.0, "sd": 0.0, "median": 1.0, "min": 1.0, "max": 1.0, "n": 1})
    assert set(m) == {"n_scored", "n_without_truth", "truth_errors", "micro_dice", "dice", "iou", "precision",
                      "recall", "hd95", "hd95_mm"}
    assert set(s) == {"images", "ok", "errors", "errors_by_reason", "error_examples", "qc_flagged",
                      "qc_reasons", "qc_notes", "quality_flagged", "quality_scored", "lung_fraction",
                      "mean_confidence", "quality_score", "metrics", "skipped_files", "skipped_by_reason",
                      "skipped_examples"}
    assert (s["skipped_files"], s["skipped_by_reason"], s["skipped_examples"]) == (0, {}, [])


def test_accumulator_minimal_tables():
    from raysegment.outputs.results import SummaryAccumulator

    # no image_uri, no dice, no qc_notes / quality_score / truth columns: counts only, no metrics section
    t = pa.table({"status": ["ok", "error", None, "ok"], "error_stage": [None, "read", None, None],
                  "error_type": [None, None, "E", None], "error": [None, "lost", None, None],
                  "qc_flag": [None, None, None, True], "qc_reasons": pa.nulls(4, pa.null()),
                  "lung_fraction": [0.25, None, None, 0.75], "mean_confidence": [1.0, None, None, 1.0]})
    acc = SummaryAccumulator()
    acc.add(t)
    s = acc.result()
    assert (s["images"], s["ok"], s["errors"], s["qc_flagged"]) == (4, 2, 2, 1)
    assert s["errors_by_reason"] == {"read/None": 1, "None/E": 1}
    assert s["error_examples"] == ["lost", ""]
    assert s["qc_reasons"] == {} and s["qc_notes"] == {} and "metrics" not in s
    assert (s["quality_flagged"], s["quality_scored"]) == (0, 0)
    assert _same(s["quality_score"], _nan_stat())
    assert _same(s["lung_fraction"], {"mean": 0.5, "sd": math.sqrt(0.125), "median": 0.5, "min": 0.25,
                                      "max": 0.75, "n": 2})
    assert acc._rows == 4
    acc.add(t)
    s = acc.result()
    assert acc._rows == 8 and s["images"] == 8 and s["error_examples"] == ["lost", "", "lost", ""]
    # truth_uri without a dice column still marks the run as having ground truth
    acc = SummaryAccumulator()
    acc.add(pa.table({"status": ["ok"], "qc_flag": [False], "qc_reasons": [["a"]], "truth_uri": ["t"]}))
    s = acc.result()
    assert s["metrics"]["n_scored"] == 0 and s["metrics"]["micro_dice"] == 1.0 and s["qc_reasons"] == {"a": 1}
    acc = SummaryAccumulator()
    acc.add(pa.table({"status": ["ok"], "qc_flag": [False], "qc_reasons": [[]], "truth_uri": [None]}))
    assert "metrics" not in acc.result()


def test_accumulator_all_ok_or_all_errors():
    from raysegment.outputs.results import SummaryAccumulator

    acc = SummaryAccumulator(examples=0)
    acc.add(pa.Table.from_pylist([_row("/a.png", "error", error_stage="s", error_type="T", error="x")]))
    s = acc.result()
    assert s["error_examples"] == [] and s["errors_by_reason"] == {"s/T": 1} and s["ok"] == 0
    acc = SummaryAccumulator()
    assert acc.examples == 5 and acc.result()["images"] == 0 and acc.result()["errors"] == 0
    assert acc.any_truth is False and acc.stats == {} and acc.error_examples == []
    assert (acc.n_scored, acc.n_without_truth, acc.truth_errors, acc.tp, acc.fp, acc.fn) == (0, 0, 0, 0, 0, 0)


def test_stat_merges_chunks_with_exact_moments():
    import numpy as np

    from raysegment.outputs.results import _Stat

    st = _Stat()
    assert (st.n, st.mean, st.m2, st.low, st.high) == (0, 0.0, 0.0, np.inf, -np.inf)
    assert st.keys.dtype == np.uint64 and st.values.dtype == np.float64
    assert st.keys.size == st.values.size == 0
    chunks = [[1.0, 2.0], [float("nan"), float("inf")], [3.0, None], [10.0, 20.0, -float("inf")]]
    key = 0
    for chunk in chunks:
        keys = np.arange(key, key + len(chunk), dtype=np.uint64)
        key += len(chunk)
        st.add(pa.chunked_array([pa.array(chunk, pa.float64())]), keys)
    # 1, 2, 3, 10, 20: mean 7.2, squared deviations 38.44 + 27.04 + 17.64 + 7.84 + 163.84 = 254.8
    assert st.n == 5 and st.mean == pytest.approx(7.2) and st.m2 == pytest.approx(254.8)
    assert list(st.keys) == [0, 1, 4, 6, 7]
    assert st.summary() == pytest.approx(
        {"mean": 7.2, "sd": math.sqrt(254.8 / 4), "median": 3.0, "min": 1.0, "max": 20.0, "n": 5})
    one = _Stat()
    one.add(pa.chunked_array([pa.array([4], pa.int64())]), np.array([9], np.uint64))
    assert one.summary() == {"mean": 4.0, "sd": 0.0, "median": 4.0, "min": 4.0, "max": 4.0, "n": 1}
    neg = _Stat()
    neg.add(pa.chunked_array([pa.array([-5.0, -7.0])]), np.array([1, 2], np.uint64))
    assert neg.summary()["max"] == -5.0 and neg.summary()["min"] == -7.0


def test_stat_keeps_the_smallest_keys(monkeypatch):
    import numpy as np

    from raysegment.outputs import results

    monkeypatch.setattr(results, "SAMPLE", 2)
    st = results._Stat()
    st.add(pa.chunked_array([pa.array([40.0, 30.0, 10.0, 20.0])]), np.array([4, 3, 1, 2], np.uint64))
    assert st.keys.size == 4  # 2 * SAMPLE: not trimmed yet
    st.add(pa.chunked_array([pa.array([50.0])]), np.array([5], np.uint64))
    assert sorted(st.keys.tolist()) == [1, 2] and sorted(st.values.tolist()) == [10.0, 20.0]
    s = st.summary()
    assert (s["mean"], s["min"], s["max"], s["n"], s["median"]) == (30.0, 10.0, 50.0, 5, 15.0)
    st = results._Stat()
    st.add(pa.chunked_array([pa.array([30.0, 10.0, 20.0])]), np.array([7, 5, 6], np.uint64))
    assert st.keys.size == 3
    assert st.summary()["median"] == 15.0 and sorted(st.keys.tolist()) == [5, 6]
    st = results._Stat()
    st.add(pa.chunked_array([pa.array([1.0, 2.0])]), np.array([2, 1], np.uint64))
    st._trim()
    assert st.keys.tolist() == [2, 1] and st.values.tolist() == [1.0, 2.0]  # SAMPLE rows: left as they are


def test_hash_and_flatten():
    import numpy as np
    import pandas as pd

    from raysegment.outputs.results import _flatten, _hash, _value_counts

    strings = pa.chunked_array([pa.array(["a", "b", "a"])])
    h = _hash(strings)
    assert h.dtype == np.uint64 and h[0] == h[2] and h[0] != h[1]
    expected = pd.util.hash_array(np.array(["a", "b", "a"], dtype=object), categorize=False)
    assert h.tolist() == expected.tolist()
    assert _flatten(pa.chunked_array([pa.nulls(2)])).to_pylist() == []
    assert _flatten(pa.chunked_array([pa.nulls(2)])).type == pa.string()
    assert _flatten(pa.chunked_array([pa.array([["x"], None, ["y", "x"]])])).to_pylist() == ["x", "y", "x"]
    assert _value_counts(pa.array(["x", "y", "x"])) == (["x", "y"], [2, 1])


def test_resume_schema_version_and_calibration_each_matter():
    before = {"model_id": "m", "input_size": 10, "input_mtime_ns": 5, "input_etag": None, "truth_uri": None,
              "schema_version": SCHEMA_VERSION, "calibration_id": "c1"}
    assert skipped(before, "m", 10, 5, None, None, "c1")
    assert skipped({**before, "schema_version": 2}, "m", 10, 5, None, None, "c1")  # v2 ok rows resume ...
    assert not skipped({**before, "schema_version": 2, "image_format": "dicom"}, "m", 10, 5, None, None, "c1")
    assert not skipped({**before, "schema_version": 1}, "m", 10, 5, None, None, "c1")  # ... not v1
    assert not skipped(before, "m", 10, 5, None, None, "c2")
    assert not skipped(before, "m", 11, 5, None, None, "c1")  # size changed
    assert not skipped(before, "m", 10, 6, None, None, "c1")  # mtime changed


def test_accumulator_keeps_few_examples_and_merges_counts_over_partitions():
    from raysegment.outputs.results import SummaryAccumulator

    acc = SummaryAccumulator(examples=2)
    for p in range(3):
        acc.add(pa.Table.from_pylist([
            _row(f"/d/{p}{i}.png", "error", error_stage="read", error_type="OSError", error="gone")
            for i in range(2)] + [_row(f"/t/{p}.png", truth_uri="t", truth_error="bad", dice=None)]))
        assert len(acc.error_examples) == 2  # memory stays bounded
    s = acc.result()
    assert s["error_examples"] == ["00.png: gone", "01.png: gone"]
    assert s["metrics"]["truth_errors"] == 3 and s["metrics"]["n_scored"] == 0


def test_accumulator_truth_seen_in_an_earlier_partition_is_kept():
    from raysegment.outputs.results import SummaryAccumulator

    with_truth = pa.table({"status": ["ok"], "qc_flag": [False], "qc_reasons": [[]], "truth_uri": ["t"]})
    without = pa.table({"status": ["ok"], "qc_flag": [False], "qc_reasons": [[]]})
    acc = SummaryAccumulator()
    acc.add(with_truth)
    acc.add(without)
    assert acc.result()["metrics"]["n_scored"] == 0
    scored = pa.Table.from_pylist([_row("/a.png", truth_uri="t", dice=0.5, iou=0.5, precision=0.5, recall=0.5,
                                        tp=1, fp=1, fn=1)])
    unscored = pa.Table.from_pylist([_row("/b.png", dice=None)])
    acc = SummaryAccumulator()
    acc.add(scored)
    acc.add(unscored)
    assert acc.any_truth is True and acc.result()["metrics"]["n_without_truth"] == 1


def test_accumulator_median_sample_is_the_smallest_uri_hashes(monkeypatch):
    import numpy as np
    import pandas as pd

    from raysegment.outputs import results

    monkeypatch.setattr(results, "SAMPLE", 2)
    uris = [f"/d/img{i}.png" for i in range(8)]
    hashes = pd.util.hash_array(np.array(uris, dtype=object), categorize=False)
    kept = sorted(np.argsort(hashes)[:2].tolist())  # the rows whose image_uri hashes are smallest
    acc = results.SummaryAccumulator()
    for part in (range(5), range(5, 8)):
        acc.add(pa.Table.from_pylist([_row(uris[i], lung_fraction=float(i)) for i in part]))
    s = acc.result()["lung_fraction"]
    assert (s["n"], s["mean"], s["min"], s["max"]) == (8, 3.5, 0.0, 7.0)
    assert s["median"] == (kept[0] + kept[1]) / 2
    # Without image_uri, rows are keyed by their running number over all partitions ("0", "1", ...).
    numbers = pd.util.hash_array(np.array([str(i) for i in range(8)], dtype=object), categorize=False)
    kept = sorted(np.argsort(numbers)[:2].tolist())
    acc = results.SummaryAccumulator()
    for part in (range(5), range(5, 8)):
        acc.add(pa.table({"status": ["ok"] * len(part), "qc_flag": [False] * len(part),
                          "qc_reasons": pa.nulls(len(part), pa.null()),
                          "lung_fraction": [float(i) for i in part]}))
    assert acc.result()["lung_fraction"]["median"] == (kept[0] + kept[1]) / 2


def test_skipped_rows_count_apart_from_errors_and_rank_between_ok_and_error(tmp_path):
    """status "skipped" (a file that is no chest film): neither ok nor an error; in read_results a skipped
    row beats an error row of the same image (an old version's "DICOM has no Rows" for a structured report)
    and loses to an ok row."""
    from raysegment.outputs.results import SummaryAccumulator

    acc = SummaryAccumulator(examples=2)
    acc.add(pa.Table.from_pylist([
        _row("/d/a.png"),
        _row("/d/b.png", "error", error_stage="decode", error_type="DecodeError", error="bad"),
        _row("/d/README", "skipped", skip_reason="not an image (no image format recognised)"),
        _row("/d/sr.dcm", "skipped", skip_reason="not an image: DICOM Structured Report"),
        _row("/d/ct.dcm", "skipped", skip_reason="not a chest radiograph (Modality CT)"),
        _row("/d/ct2.dcm", "skipped", skip_reason="not a chest radiograph (Modality CT)")]))
    s = acc.result()
    assert (s["images"], s["ok"], s["errors"], s["skipped_files"]) == (6, 1, 1, 4)
    assert s["errors_by_reason"] == {"decode/DecodeError": 1} and s["error_examples"] == ["b.png: bad"]
    assert s["skipped_by_reason"] == {"not a chest radiograph (Modality CT)": 2,
                                      "not an image (no image format recognised)": 1,
                                      "not an image: DICOM Structured Report": 1}
    assert s["skipped_examples"] == ["README: not an image (no image format recognised)",
                                     "sr.dcm: not an image: DICOM Structured Report"]
    from raysegment.outputs.report import format_summary

    text = format_summary(s)
    assert "6 images: 1 ok, 1 errors, 4 skipped (not chest films)" in text
    assert "  skipped: not a chest radiograph (Modality CT) x2, " in text

    _write(tmp_path, RUN1, [{"image_uri": "sr", "status": "error", "error": "DICOM has no readable Rows"},
                            {"image_uri": "x", "status": "ok"}])
    _write(tmp_path, RUN2, [{"image_uri": "sr", "status": "skipped", "skip_reason": "r"},
                            {"image_uri": "x", "status": "skipped", "skip_reason": "r"}])
    rows = {r["image_uri"]: (r["status"], r["run_id"]) for r in read_results(str(tmp_path)).to_pylist()}
    assert rows == {"sr": ("skipped", RUN2), "x": ("ok", RUN1)}
