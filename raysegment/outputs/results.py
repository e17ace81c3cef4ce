"""The output of bulk inference: its Parquet schema, reading it back deduplicated, and the run summary.

Layout of an output URI (local folder or s3:// prefix):

    OUTPUT/runs/<run_id>/*.parquet   rows written by one run (Ray Data write_parquet)
    OUTPUT/runs/<run_id>/run.json    what the run was asked to do (config, plan, model, inputs)
    OUTPUT/runs/<run_id>/summary.json
    OUTPUT/summary.json              the latest run's summary

Each run writes under its own prefix, so a rerun never appends into, or overwrites, an earlier run's
files. `read_results` merges all runs: per image_uri the latest ok row wins, else the latest skipped row,
else the latest error row. run ids start with a UTC timestamp, so "latest" is the largest run id. The
schema is documented in docs/output_schema.md; bump SCHEMA_VERSION on any change there (once per round,
in the block below).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysegment.io import storage
from raysegment.postprocess.metrics import METRICS, summarize

log = logging.getLogger(__name__)

# --- schema version: ONE bump per round, here -------------------------------------------------------
# 2: quality, orientation/inversion, compact masks, DICOM-SEG, structures, CTR.
# 3: status "skipped" + skip_reason (files that are no chest film: issue #23). Shared with the QC issue of
#    the same round: its columns join version 3 in SCHEMA below, without another bump.
SCHEMA_VERSION = 3
# Resume (infer/worklist.todo): the oldest version whose ok rows still count as done. Version 3 changed what
# an ok row of a DICOM input is (Modality, SOP class and lateral rules) and when a PNG/JPEG/TIFF is
# inversion-corrected (only upright layouts, a subset of version 2's calls); for every other input a
# version-2 ok row is exactly what version 3 writes. So v2 ok rows resume unless the input was DICOM or was
# inversion-corrected (those are redone); skipped rows resume only when written by this very version. A
# later change to what ok rows hold raises this to SCHEMA_VERSION.
RESUMES_FROM = 2
STATUSES = ("ok", "error", "skipped")
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
    pa.field("status", pa.string(), nullable=False),  # one of STATUSES: "ok" | "error" | "skipped"
    pa.field("error_stage", pa.string()),  # one of STAGES when status == "error"
    pa.field("error_type", pa.string()),  # exception class, e.g. "DecodeError"
    pa.field("error", pa.string()),  # one-line reason
    pa.field("skip_reason", pa.string()),  # (v3) why a "skipped" file is no chest film, without its name
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
    pa.field("mask_rle", pa.string()),  # COCO compressed RLE of the mask (column-major), height x width
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
IDENTITY_COLUMNS = ("model_id", "calibration_id", "schema_version", "input_size", "input_mtime_ns",
                    "input_etag", "truth_uri", "image_format", "inversion_corrected", "skip_reason")


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
        schema = (SCHEMA if wanted is None
                  else pa.schema([SCHEMA.field(c) for c in wanted if c in SCHEMA.names]))
        return schema.empty_table()
    table = pa.concat_tables(tables, promote_options="default")
    if not all_rows and table.num_rows:
        table = table.take(latest_indices(table))
    table = _with_missing_columns(table, SCHEMA.names if columns is None else columns)
    return table if columns is None else table.select([c for c in columns if c in table.column_names])


def _with_missing_columns(table: pa.Table, wanted) -> pa.Table:
    """Files of an older schema version lack the newer columns: add them as nulls, so every reader sees
    the current columns (all of them are nullable) whatever version wrote the rows."""
    for name in wanted:
        if name in SCHEMA.names and name not in table.column_names:
            table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
    known = [n for n in SCHEMA.names if n in table.column_names]  # in SCHEMA's order, unknown ones last
    return table.select(known + [n for n in table.column_names if n not in SCHEMA.names])


def latest_indices(table: pa.Table, order: np.ndarray | None = None) -> np.ndarray:
    """Row index of the winning row per image_uri, in ascending row order: ok beats skipped beats error,
    then the larger run id, then the later row in reading `order` (default: the row position; the worklist
    passes its `seq`). THE rule for "which row of an image counts": read_results and the worklist's resume
    and summary (infer/worklist.latest) both use it, so a resumed run skips exactly what read_results
    shows."""
    import pandas as pd

    status = table.column("status").to_numpy(zero_copy_only=False)
    keys = pd.DataFrame({
        "uri": table.column("image_uri").to_numpy(zero_copy_only=False),
        "ok": (status == "ok").astype(np.int8) * 2 + (status == "skipped").astype(np.int8),
        "run": table.column("run_id").to_numpy(zero_copy_only=False),
        "order": np.arange(table.num_rows) if order is None else order,
        "pos": np.arange(table.num_rows),
    })
    # The last of each image after sorting wins; `order` breaks every tie (it is unique per row).
    winners = keys.sort_values(["uri", "ok", "run", "order"]).groupby("uri", sort=False).tail(1)
    return np.sort(winners["pos"].to_numpy())


# --- summary ------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ["status", "error_stage", "error_type", "error", "skip_reason", "qc_flag", "qc_reasons",
                   "qc_notes",
                   "quality_score", "lung_fraction", "mean_confidence", "truth_uri", "truth_error",
                   *GT_METRICS, "tp", "fp", "fn", "total_ms", "ctr", "structures"]


def _example(row: dict, column: str = "error") -> str:
    """An error (or skipped) row as one line that names its file once."""
    name, error = storage.basename(row["image_uri"]), row.get(column) or ""
    return error if name in error else f"{name}: {error}"


SAMPLE = 100_000  # values per measurement kept for quantiles (medians); exact below this many rows


class SummaryAccumulator:
    """Mergeable aggregates of deduplicated result rows, added a table (a partition) at a time.

    Counts, sums, means, sd, min and max are exact at any scale. Medians come from a bottom-k sample:
    per measurement, the values of the SAMPLE rows with the smallest hash of their image_uri (a uniform
    random sample, the same on every run); exact up to SAMPLE rows, beyond that a median of 10^5
    uniformly chosen values (about +-0.3 percentile points). Memory is O(SAMPLE), not O(rows).
    """

    MEASURES = ("lung_fraction", "mean_confidence", "quality_score")

    def __init__(self, examples: int = 5) -> None:
        self.examples = examples
        self.images = self.ok = self.skipped = self.qc_flagged = 0
        self.by_reason: Counter = Counter()
        self.skip_reasons: Counter = Counter()
        self.skip_examples: list[str] = []
        self.qc: Counter = Counter()
        self.notes: Counter = Counter()
        self.error_examples: list[str] = []
        self.stats: dict[str, _Stat] = {}
        self.any_truth = False
        self.n_scored = self.n_without_truth = self.truth_errors = 0
        self.tp = self.fp = self.fn = 0
        self._rows = 0  # rows seen: sample key when a table has no image_uri
        self.structures: set[str] = set()  # further structures seen (multi-structure models)

    def add(self, table: pa.Table) -> None:
        n = table.num_rows
        if n == 0:
            return
        col = table.column
        ok = pc.fill_null(pc.equal(col("status"), "ok"), False)
        self.images += n
        n_ok = int(pc.sum(ok).as_py() or 0)
        self.ok += n_ok
        if "image_uri" in table.column_names:
            keys = _hash(col("image_uri"))
        else:
            keys = _hash(pa.array([str(i) for i in range(self._rows, self._rows + n)]))
        self._rows += n
        skipped = pc.fill_null(pc.equal(col("status"), "skipped"), False)
        n_skipped = int(pc.sum(skipped).as_py() or 0)
        self.skipped += n_skipped
        if n_skipped:
            passed = table.filter(skipped)
            reasons = (pc.fill_null(passed.column("skip_reason"), "unknown") if "skip_reason" in
                       passed.column_names else pa.array(["unknown"] * n_skipped))
            self.skip_reasons.update(dict(zip(*_value_counts(reasons), strict=True)))
            for row in passed.slice(0, max(0, self.examples - len(self.skip_examples))).to_pylist():
                self.skip_examples.append(_example(row, "skip_reason") if "image_uri" in row
                                          else (row.get("skip_reason") or ""))
        errors = table.filter(pc.and_(pc.invert(ok), pc.invert(skipped)))
        if errors.num_rows:
            reasons = pc.binary_join_element_wise(
                pc.cast(pc.fill_null(errors.column("error_stage"), "None"), pa.string()), "/",
                pc.cast(pc.fill_null(errors.column("error_type"), "None"), pa.string()), "")
            self.by_reason.update(dict(zip(*_value_counts(reasons), strict=True)))
            for row in errors.slice(0, max(0, self.examples - len(self.error_examples))).to_pylist():
                self.error_examples.append(_example(row) if "image_uri" in row else (row.get("error") or ""))
        good = table.filter(ok)
        good_keys = keys[np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)]
        self.qc_flagged += int(pc.sum(pc.fill_null(good.column("qc_flag"), False)).as_py() or 0)
        reasons = _flatten(good.column("qc_reasons"))
        if len(reasons):
            self.qc.update(dict(zip(*_value_counts(reasons), strict=True)))
        if "qc_notes" in good.column_names:
            notes = _flatten(good.column("qc_notes"))
            if len(notes):
                self.notes.update(dict(zip(*_value_counts(notes), strict=True)))
        for name in self.MEASURES:
            if name in good.column_names:  # quality_score: absent from results written before schema 2
                self.stats.setdefault(name, _Stat()).add(good.column(name), good_keys)
        self._add_structures(good, good_keys)
        truth = col("truth_uri") if "truth_uri" in table.column_names else pa.nulls(n, pa.string())
        has_truth = pc.invert(pc.is_null(truth))
        if "dice" not in table.column_names:
            self.any_truth |= bool(pc.any(has_truth).as_py())
            return
        scored_mask = pc.invert(pc.is_null(good.column("dice")))
        scored = good.filter(scored_mask)
        self.any_truth |= bool(pc.any(has_truth).as_py()) or scored.num_rows > 0
        self.n_scored += scored.num_rows
        self.n_without_truth += int(pc.sum(pc.is_null(good.column("truth_uri"))).as_py() or 0)
        if "truth_error" in good.column_names:
            self.truth_errors += int(pc.sum(pc.invert(pc.is_null(good.column("truth_error")))).as_py() or 0)
        scored_keys = good_keys[np.asarray(scored_mask.to_numpy(zero_copy_only=False), dtype=bool)]
        for name in GT_METRICS:
            if name in scored.column_names:
                self.stats.setdefault(name, _Stat()).add(scored.column(name), scored_keys)
        for name in ("tp", "fp", "fn"):
            if name in scored.column_names:
                setattr(self, name, getattr(self, name) + int(pc.sum(scored.column(name)).as_py() or 0))

    def _add_structures(self, good: pa.Table, keys: np.ndarray) -> None:
        """Multi-structure models: the CTR and each further structure's dice (with ground truth); lungs-only
        results have these columns null and add nothing."""
        if "ctr" in good.column_names and good.column("ctr").null_count < good.num_rows:
            self.stats.setdefault("ctr", _Stat()).add(good.column("ctr"), keys)
        if "structures" not in good.column_names or good.column("structures").null_count == good.num_rows:
            return
        column = good.column("structures").combine_chunks()
        parts = pc.list_flatten(column)
        parents = np.asarray(pc.list_parent_indices(column).to_numpy(zero_copy_only=False), dtype=np.int64)
        names = np.asarray(pc.struct_field(parts, "name").to_numpy(zero_copy_only=False))
        dice = pc.struct_field(parts, "dice")
        for name in sorted(set(names.tolist())):
            chosen = names == name
            self.structures.add(name)
            self.stats.setdefault(f"{name}_dice", _Stat()).add(
                pa.chunked_array([dice.filter(pa.array(chosen))]), keys[parents[chosen]])

    def sample(self, name: str) -> tuple[np.ndarray, int]:
        """(the bounded sample of one measure's finite values, their exact count n): every value up to
        SAMPLE values, beyond that the values of the SAMPLE rows with the smallest image_uri hashes (a
        uniform sample); an empty array and 0 for a measure never seen. For plots of the distributions."""
        stat = self.stats.get(name)
        if stat is None or stat.n == 0:
            return np.empty(0), 0
        stat._trim()
        return stat.values.copy(), stat.n

    def result(self) -> dict:
        empty = _Stat()
        out = {
            "images": self.images,
            "ok": self.ok,
            "errors": self.images - self.ok - self.skipped,
            "errors_by_reason": dict(self.by_reason.most_common()),
            "error_examples": self.error_examples[: self.examples],
            # rows with status "skipped": files that are no chest film, told by their content
            "skipped_files": self.skipped,
            "skipped_by_reason": dict(self.skip_reasons.most_common()),
            "skipped_examples": self.skip_examples[: self.examples],
            "qc_flagged": self.qc_flagged,
            "qc_reasons": dict(self.qc.most_common()),
            "qc_notes": dict(self.notes.most_common()),
            # ok rows whose quality_score is below the calibration's threshold, and ok rows with a score at
            # all (the checkpoint has a calibration)
            "quality_flagged": self.qc.get("low_quality_score", 0),
            "quality_scored": self.stats.get("quality_score", empty).n,
            **{name: self.stats.get(name, empty).summary() for name in self.MEASURES},
        }
        if self.n_scored or self.any_truth:
            from raysegment.postprocess.metrics import scores_from_counts

            out["metrics"] = {
                "n_scored": self.n_scored,
                "n_without_truth": self.n_without_truth,
                "truth_errors": self.truth_errors,
                "micro_dice": float(scores_from_counts(self.tp, self.fp, self.fn)["dice"]),
                **{name: self.stats.get(name, empty).summary() for name in GT_METRICS},
            }
        if "ctr" in self.stats:
            out["ctr"] = self.stats["ctr"].summary()
        if self.structures:  # dice per further structure, over the images whose truth labels it
            out["structure_dice"] = {n: self.stats[f"{n}_dice"].summary() for n in sorted(self.structures)}
        return out


class _Stat:
    """Exact n, sum, sum of squares, min, max of finite values, and a bottom-k sample for the median."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0  # merged per table (Chan et al.), numerically stable
        self.low, self.high = np.inf, -np.inf
        self.keys = np.empty(0, np.uint64)
        self.values = np.empty(0, np.float64)

    def add(self, column: pa.ChunkedArray, keys: np.ndarray) -> None:
        values = np.asarray(pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy(), dtype=np.float64)
        finite = np.isfinite(values)
        values, keys = values[finite], keys[finite]
        if values.size == 0:
            return
        n_b, mean_b = values.size, float(values.mean())
        m2_b = float(np.square(values - mean_b).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = mean_b if self.n == 0 else self.mean + delta * n_b / n
        self.m2 += m2_b + (delta * delta * self.n * n_b / n if self.n else 0.0)
        self.n = n
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        self.keys = np.concatenate([self.keys, keys])
        self.values = np.concatenate([self.values, values])
        if self.keys.size > 2 * SAMPLE:
            self._trim()

    def _trim(self) -> None:
        if self.keys.size > SAMPLE:
            keep = np.argpartition(self.keys, SAMPLE - 1)[:SAMPLE]
            self.keys, self.values = self.keys[keep], self.values[keep]

    def summary(self) -> dict:
        if self.n == 0:
            return summarize(np.empty(0))
        self._trim()
        sd = float(np.sqrt(self.m2 / (self.n - 1))) if self.n > 1 else 0.0
        return {"mean": self.mean, "sd": sd, "median": float(np.median(self.values)),
                "min": self.low, "max": self.high, "n": self.n}


def _hash(strings) -> np.ndarray:
    import pandas as pd

    return pd.util.hash_array(np.asarray(strings.to_numpy(zero_copy_only=False), dtype=object),
                              categorize=False)


def _flatten(column: pa.ChunkedArray) -> pa.Array:
    """The values of a list column; none when the column holds no lists (all null: a table built from
    rows without the field)."""
    if not pa.types.is_list(column.type):
        return pa.array([], pa.string())
    return pc.list_flatten(column)


def _value_counts(array) -> tuple[list, list]:
    counts = pc.value_counts(array)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def summarize_results(table: pa.Table, examples: int = 5) -> dict:
    """Counts, QC, and aggregate metrics of a deduplicated results table (SUMMARY_COLUMNS suffice).

    For archives too large for one table, add partitions to a SummaryAccumulator (this is one add)."""
    acc = SummaryAccumulator(examples)
    acc.add(table)
    return acc.result()
