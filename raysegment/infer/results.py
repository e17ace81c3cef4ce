"""The output of bulk inference: its Parquet schema, reading it back deduplicated, and the run summary.

Layout of an output URI (local folder or s3:// prefix):

    OUTPUT/runs/<run_id>/*.parquet   rows written by one run (Ray Data write_parquet)
    OUTPUT/runs/<run_id>/run.json    what the run was asked to do (config, plan, model, inputs)
    OUTPUT/runs/<run_id>/summary.json
    OUTPUT/summary.json              the latest run's summary

Each run writes under its own prefix, so a rerun never appends into, or overwrites, an earlier run's
files. `read_results` merges all runs: per image_uri the latest ok row wins, else the latest error row.
run ids start with a UTC timestamp, so "latest" is the largest run id. The schema is documented in
docs/output_schema.md; bump SCHEMA_VERSION on any change there.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysegment.evaluation.metrics import METRICS, MetricSums, summarize
from raysegment.io import storage

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: quality, orientation/inversion, compact masks, DICOM-SEG, structures, CTR
STAGES = ("read", "decode", "preprocess", "infer", "postprocess")
GT_METRICS = (*METRICS, "hd95", "hd95_mm")

SCHEMA = pa.schema([
    # provenance
    pa.field("schema_version", pa.int16(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("model_id", pa.string(), nullable=False),  # sha256 of the weights (16 hex digits)
    pa.field("package_version", pa.string(), nullable=False),
    # input and its identity
    pa.field("image_uri", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),  # file stem; matches ground truth
    pa.field("input_size", pa.int64()),  # bytes
    pa.field("input_mtime_ns", pa.int64()),
    pa.field("input_etag", pa.string()),
    # outcome
    pa.field("status", pa.string(), nullable=False),  # "ok" | "error"
    pa.field("error_stage", pa.string()),  # one of STAGES when status == "error"
    pa.field("error_type", pa.string()),  # exception class, e.g. "DecodeError"
    pa.field("error", pa.string()),  # one-line reason
    # the image
    pa.field("image_format", pa.string()),  # png | jpeg | tiff | dicom
    pa.field("bit_depth", pa.int16()),
    pa.field("height", pa.int32()),  # original resolution, pixels
    pa.field("width", pa.int32()),
    pa.field("pixel_spacing_row_mm", pa.float64()),  # when known (DICOM, or --pixel-spacing)
    pa.field("pixel_spacing_col_mm", pa.float64()),
    # the segmentation
    pa.field("mask_png", pa.binary()),  # 8-bit PNG, 0/255, original resolution
    pa.field("mask_uri", pa.string()),  # copy under --masks-out, when asked
    pa.field("threshold", pa.float64()),
    pa.field("lung_area_px", pa.int64()),
    pa.field("lung_fraction", pa.float64()),  # lung area / image area
    pa.field("right_lung_area_px", pa.int64()),  # patient's right = image left
    pa.field("left_lung_area_px", pa.int64()),
    pa.field("lung_area_cm2", pa.float64()),  # when pixel spacing is known
    pa.field("n_components", pa.int32()),  # before cleanup
    pa.field("mean_confidence", pa.float64()),  # mean probability inside the mask
    pa.field("qc_flag", pa.bool_()),
    pa.field("qc_reasons", pa.list_(pa.string())),  # reasons of severity "flag": they set qc_flag
    pa.field("qc_notes", pa.list_(pa.string())),  # reasons of severity "note": recorded, never set qc_flag
    pa.field("quality_score", pa.float64()),  # predicted dice in [0, 1], without ground truth
    pa.field("calibration_id", pa.string()),  # digest of the QC calibration that produced quality_score
    # how the input was read (v2)
    pa.field("exif_rotation", pa.int16()),  # degrees clockwise applied from the EXIF orientation, 0 if none
    pa.field("inversion_corrected", pa.bool_()),  # an inverted export (white air) was detected and inverted
    # compact and DICOM outputs (v2)
    pa.field("mask_rle", pa.string()),  # COCO-style compressed RLE of the mask (column-major), size = height x width
    pa.field("dicom_seg_uri", pa.string()),  # DICOM Segmentation object written for a DICOM input
    # further structures (v2; filled by multi-structure models)
    pa.field("structures", pa.list_(pa.struct([
        pa.field("name", pa.string()),  # e.g. "heart", "left_clavicle"
        pa.field("area_px", pa.int64()),
        pa.field("area_cm2", pa.float64()),
        pa.field("mask_rle", pa.string()),
        pa.field("dice", pa.float64()),  # with ground truth
    ]))),
    pa.field("ctr", pa.float64()),  # cardiothoracic ratio = heart_width_px / thoracic_width_px
    pa.field("heart_width_px", pa.int32()),
    pa.field("thoracic_width_px", pa.int32()),
    pa.field("thoracic_row", pa.int32()),  # image row where the thoracic width was measured
    # ground truth (--ground-truth)
    pa.field("truth_uri", pa.string()),  # mask file(s), '|'-joined
    pa.field("truth_error", pa.string()),  # why metrics are missing although a truth exists
    *[pa.field(name, pa.float64()) for name in GT_METRICS],
    pa.field("tp", pa.int64()),
    pa.field("fp", pa.int64()),
    pa.field("fn", pa.int64()),
    # timing, milliseconds per image
    pa.field("read_ms", pa.float32()),
    pa.field("decode_ms", pa.float32()),  # decode + preprocess
    pa.field("infer_ms", pa.float32()),  # share of the batched forward
    pa.field("postprocess_ms", pa.float32()),  # postprocess + encode + metrics + mask copy
    pa.field("total_ms", pa.float32()),
])

# What resume and the summary need (everything but the masks).
KEY_COLUMNS = ("image_uri", "run_id", "status")
IDENTITY_COLUMNS = ("model_id", "calibration_id", "schema_version", "input_size", "input_mtime_ns", "input_etag",
                    "truth_uri")


def runs_uri(output: str) -> str:
    return storage.join(output, "runs")


def run_uri(output: str, run_id: str) -> str:
    return storage.join(runs_uri(output), run_id)


def result_files(output: str) -> list[str]:
    """Every Parquet file of every run under `output`, sorted (so by run id)."""
    runs = runs_uri(output)
    if not storage.exists(runs):
        return []
    return [e.uri for e in storage.list_files(runs) if e.uri.endswith(".parquet")]


def _read_file(uri: str, columns: list[str] | None) -> pa.Table | None:
    """One Parquet file (requested columns it has), or None when it is unreadable."""
    fs, path = storage.filesystem(uri)
    try:
        names = pq.read_schema(path, filesystem=fs).names
        wanted = None if columns is None else [c for c in columns if c in names]
        return pq.read_table(path, filesystem=fs, columns=wanted)
    except (OSError, pa.ArrowException) as e:
        # A run killed while writing can leave a partial file; its images are simply not done yet.
        log.warning("skipping unreadable result file %s: %s", uri, e)
        return None


def read_results(output: str, columns: list[str] | None = None, all_rows: bool = False) -> pa.Table:
    """The results under `output` as a pyarrow Table with one row per image_uri (deduplicated).

    Per image the latest ok row wins (largest run id), else the latest error row. `columns` selects
    columns (leave out "mask_png" for a fast read of the measurements); `all_rows=True` keeps every row
    of every run (history). Returns an empty table with SCHEMA's columns when there is nothing yet.
    Use `.to_pandas()` for a DataFrame.
    """
    wanted = None if columns is None else list(dict.fromkeys([*KEY_COLUMNS, *columns]))
    tables = [t for t in (_read_file(f, wanted) for f in result_files(output)) if t is not None]
    if not tables:
        schema = SCHEMA if wanted is None else pa.schema([SCHEMA.field(c) for c in wanted if c in SCHEMA.names])
        return schema.empty_table()
    table = pa.concat_tables(tables, promote_options="default")
    if not all_rows and table.num_rows:
        table = table.take(_latest_indices(table))
    return table if columns is None else table.select([c for c in columns if c in table.column_names])


def _latest_indices(table: pa.Table) -> np.ndarray:
    """Row index of the winning row per image_uri: ok beats error, then the larger run id, then later."""
    import pandas as pd

    keys = pd.DataFrame({
        "uri": table.column("image_uri").to_numpy(zero_copy_only=False),
        "ok": table.column("status").to_numpy(zero_copy_only=False) == "ok",
        "run": table.column("run_id").to_numpy(zero_copy_only=False),
        "pos": np.arange(table.num_rows),
    })
    winners = keys.sort_values(["uri", "ok", "run", "pos"]).groupby("uri", sort=False).tail(1)
    return np.sort(winners["pos"].to_numpy())


def done_inputs(output: str) -> dict[str, dict]:
    """image_uri -> its IDENTITY_COLUMNS values, for the images already done ok under `output`."""
    table = read_results(output, columns=["image_uri", "status", *IDENTITY_COLUMNS])
    rows = table.filter(pc.equal(table.column("status"), "ok")).to_pylist() if table.num_rows else []
    return {r["image_uri"]: {c: r.get(c) for c in IDENTITY_COLUMNS} for r in rows}


def is_done(previous: dict | None, model_id: str, size: int | None, mtime_ns: int | None, etag: str | None,
            truth_uri: str | None, calibration_id: str | None = None) -> bool:
    """Can resume skip an input: a previous ok row of this schema version with the same model and QC
    calibration (quality_score and flags depend on it), the same ground-truth file(s) (so a rerun with
    --ground-truth adds metrics), and the file unchanged in whatever we know of it now?"""
    if previous is None or previous.get("model_id") != model_id or previous.get("truth_uri") != truth_uri:
        return False
    if previous.get("calibration_id") != calibration_id or previous.get("schema_version") != SCHEMA_VERSION:
        return False
    for now, before in ((size, previous.get("input_size")), (mtime_ns, previous.get("input_mtime_ns")),
                        (etag, previous.get("input_etag"))):
        if now is not None and now != before:
            return False
    return True


# --- summary ------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ["status", "error_stage", "error_type", "error", "qc_flag", "qc_reasons", "qc_notes",
                   "quality_score", "lung_fraction", "mean_confidence", "truth_uri", "truth_error", *GT_METRICS, "tp", "fp", "fn", "total_ms"]


def _example(row: dict) -> str:
    """An error row as one line that names its file once."""
    name, error = storage.basename(row["image_uri"]), row["error"] or ""
    return error if name in error else f"{name}: {error}"


def summarize_results(table: pa.Table, examples: int = 5) -> dict:
    """Counts, QC, and aggregate metrics of a deduplicated results table (SUMMARY_COLUMNS suffice)."""
    rows = table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] != "ok"]
    by_reason = Counter(f"{r['error_stage']}/{r['error_type']}" for r in errors)
    qc = Counter(reason for r in ok for reason in (r["qc_reasons"] or []))
    notes = Counter(note for r in ok for note in (r.get("qc_notes") or []))
    quality = [r["quality_score"] for r in ok if r.get("quality_score") is not None]
    out = {
        "images": len(rows),
        "ok": len(ok),
        "errors": len(errors),
        "errors_by_reason": dict(by_reason.most_common()),
        "error_examples": [_example(r) for r in errors[:examples]],
        "qc_flagged": sum(1 for r in ok if r["qc_flag"]),
        "qc_reasons": dict(qc.most_common()),
        "qc_notes": dict(notes.most_common()),
        "quality_flagged": qc.get("low_quality_score", 0),  # ok rows whose quality_score is below the threshold
        "quality_scored": len(quality),  # ok rows with a quality_score (the checkpoint has a calibration)
        "quality_score": summarize(np.array(quality, dtype=np.float64)),
        "lung_fraction": summarize(np.array([r["lung_fraction"] for r in ok], dtype=np.float64)),
        "mean_confidence": summarize(np.array([r["mean_confidence"] for r in ok], dtype=np.float64)),
    }
    scored = [r for r in ok if r.get("dice") is not None]
    if scored or any(r.get("truth_uri") for r in rows):
        sums = MetricSums()
        for r in scored:
            sums.add({name: r[name] if r[name] is not None else float("nan") for name in (*GT_METRICS, "tp", "fp",
                                                                                           "fn")})
        out["metrics"] = {
            "n_scored": len(scored),
            "n_without_truth": sum(1 for r in ok if not r.get("truth_uri")),
            "truth_errors": sum(1 for r in ok if r.get("truth_error")),
            "micro_dice": sums.means()["micro_dice"],
            **{name: summarize(np.array([r[name] if r[name] is not None else np.nan for r in scored],
                                        dtype=np.float64)) for name in GT_METRICS},
        }
    return out
