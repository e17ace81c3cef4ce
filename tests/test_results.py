"""Results units (no Ray): the output layout, deduplicated reads (which row wins), what resume may skip, and
the run summary computed from a hand-written table with known answers."""

from __future__ import annotations

import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysegment.infer.results import (
    IDENTITY_COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    SUMMARY_COLUMNS,
    done_inputs,
    is_done,
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
    assert done_inputs("mem://") == {"a": {c: None for c in IDENTITY_COLUMNS}}


def test_done_inputs_only_ok_rows_with_their_identity(tmp_path):
    _write(tmp_path, RUN1, [
        {"image_uri": "a", "status": "ok", "model_id": "m1", "input_size": 10, "input_mtime_ns": 5,
         "input_etag": None, "truth_uri": "t/a.png"},
        {"image_uri": "b", "status": "error", "model_id": "m1", "input_size": 11, "input_mtime_ns": 6,
         "input_etag": None, "truth_uri": None},
    ])
    assert done_inputs(str(tmp_path)) == {"a": {"model_id": "m1", "calibration_id": None,
                                                "schema_version": None, "input_size": 10, "input_mtime_ns": 5,
                                                "input_etag": None, "truth_uri": "t/a.png"}}
    assert set(done_inputs(str(tmp_path))["a"]) == set(IDENTITY_COLUMNS)
    assert done_inputs(str(tmp_path / "none")) == {}


def test_is_done_compares_everything_known():
    before = {"model_id": "m1", "input_size": 10, "input_mtime_ns": 5, "input_etag": '"e1"', "truth_uri": "t",
              "schema_version": SCHEMA_VERSION, "calibration_id": None}
    assert is_done(before, "m1", 10, 5, '"e1"', "t")
    assert is_done(before, "m1", None, None, None, "t")  # nothing known now: trust the earlier row
    assert not is_done(before, "m1", 10, 5, '"e2"', "t")  # S3 object replaced: new ETag
    assert not is_done(before, "m1", 10, 5, '"e1"', None)  # ground truth removed
    assert not is_done(before, "m1", 10, 5, '"e1"', "t2")  # another truth file
    assert not is_done({**before, "model_id": None}, "m1", 10, 5, '"e1"', "t")
    assert not is_done(None, "m1", None, None, None, None)


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
