"""The work of an inference run in partitions, so the driver holds no per-input state at archive scale.

    listing (folder walk or manifest, in chunks)  --hash(image_uri) % NPARTS-->  listing partitions
    earlier results (file by file, no masks)      --hash(image_uri) % NPARTS-->  index partitions
    per partition: dedupe the listing, anti-join it with the latest ok rows of the index (resume)
        -> todo parts OUTPUT/todo/<run_id>/part-NNNNN.parquet, read back by Ray Data on any node
    after the run: this run's files -> partitions; per partition the latest row per listed input
        -> SummaryAccumulator (exact counts, sums, min/max; quantiles from a bounded sample)

Memory: a partition at a time (1/NPARTS of the inputs) plus write buffers of FLUSH_ROWS rows per
partition. Listings up to SMALL rows never touch disk. A folder is walked one directory at a time (a
flat S3 prefix of millions of keys is one listing in memory: use a manifest for those). Partition files
live in a local scratch folder of the driver; only the todo parts, which workers read, go to the output.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysegment.errors import InputError
from raysegment.io import names, storage
from raysegment.io.decode import MODALITY_REASON_PREFIX, RADIOGRAPH_MODALITIES, modality_reason
from raysegment.io.inputs import MANIFEST_COLUMNS, Skipped, iter_folder, optional_int
from raysegment.io.names import stable_key
from raysegment.outputs.results import (
    IDENTITY_COLUMNS,
    KEY_COLUMNS,
    RESUMES_FROM,
    SCHEMA,
    SCHEMA_VERSION,
    SUMMARY_COLUMNS,
    latest_indices,
    result_files,
)

NPARTS = 64
SMALL = 20_000  # rows a Partitioner keeps in memory before it spills to Parquet files
FLUSH_ROWS = 2_048  # rows buffered per partition before a row group is written
CHUNK = 8_192  # rows per listing chunk

INPUT_SCHEMA = pa.schema([
    ("image_uri", pa.string()), ("image_id", pa.string()), ("key", pa.string()), ("input_size", pa.int64()),
    ("input_mtime_ns", pa.int64()), ("input_etag", pa.string()), ("truth_uri", pa.string()),
])
LISTING_SCHEMA = pa.schema([*INPUT_SCHEMA, ("ordinal", pa.int64())])  # ordinal: position in the listing
_INDEX_COLUMNS = list(dict.fromkeys(["image_uri", *KEY_COLUMNS, *IDENTITY_COLUMNS, *SUMMARY_COLUMNS]))
# The summary needs each further structure's name and dice only: the index keeps no masks (a multi-structure
# archive would otherwise copy every heart and clavicle RLE into the partition files).
_INDEX_STRUCTURES = pa.field("structures",
                             pa.list_(pa.struct([("name", pa.string()), ("dice", pa.float64())])))
INDEX_SCHEMA = pa.schema([_INDEX_STRUCTURES if c == "structures"
                          else SCHEMA.field(c).with_nullable(True) for c in _INDEX_COLUMNS]
                         + [("seq", pa.int64())])


def partition_of(uris: pa.Array | pa.ChunkedArray, nparts: int = NPARTS) -> np.ndarray:
    """Stable partition number per URI (pandas' siphash with a fixed key: the same in every process)."""
    import pandas as pd

    values = np.asarray(uris.to_numpy(zero_copy_only=False), dtype=object)
    return (pd.util.hash_array(values, categorize=False) % np.uint64(nparts)).astype(np.int64)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns (missing ones null), cast to its types."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names
            else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


class Partitioner:
    """Tables appended in any order, split by partition_of(image_uri); read back one partition at a time."""

    def __init__(self, schema: pa.Schema, scratch: str, nparts: int = NPARTS,
                 flush_rows: int = FLUSH_ROWS) -> None:
        self.schema, self.root, self.nparts = schema, scratch, nparts
        self.flush_rows = flush_rows  # rows buffered per partition before a row group is written
        self.memory: list[pa.Table] = []  # until SMALL rows: nothing on disk
        self.buffers: list[list[pa.Table]] = [[] for _ in range(nparts)]
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.rows = 0

    @property
    def spilled(self) -> bool:
        return bool(self.writers) or self.rows > SMALL

    def add(self, table: pa.Table) -> None:
        table = conform(table, self.schema)
        self.rows += table.num_rows
        if not self.spilled:
            self.memory.append(table)
            return
        for pending in [*self.memory, table]:
            self._split(pending)
        self.memory = []

    def _split(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        parts = partition_of(table.column("image_uri"), self.nparts)
        order = np.argsort(parts, kind="stable")
        sorted_parts = parts[order]
        table = table.take(order)
        bounds = np.searchsorted(sorted_parts, np.arange(self.nparts + 1))
        for p in range(self.nparts):
            if bounds[p + 1] > bounds[p]:
                self.buffers[p].append(table.slice(bounds[p], bounds[p + 1] - bounds[p]))
                if sum(t.num_rows for t in self.buffers[p]) >= self.flush_rows:
                    self._flush(p)

    def _flush(self, p: int) -> None:
        if not self.buffers[p]:
            return
        if p not in self.writers:
            os.makedirs(self.root, exist_ok=True)
            self.writers[p] = pq.ParquetWriter(os.path.join(self.root, f"part-{p:05d}.parquet"), self.schema)
        self.writers[p].write_table(pa.concat_tables(self.buffers[p]))
        self.buffers[p] = []

    def close(self) -> None:
        for p in range(self.nparts):
            self._flush(p)
        for writer in self.writers.values():
            writer.close()
        self.writers = {p: None for p in self.writers}  # remember which files exist

    def part(self, p: int) -> pa.Table:
        if self.memory:
            table = pa.concat_tables(self.memory)
            return table.filter(pa.array(partition_of(table.column("image_uri"), self.nparts) == p))
        if p in self.writers:
            return pq.read_table(os.path.join(self.root, f"part-{p:05d}.parquet"))
        return self.schema.empty_table()


# --- listing ----------------------------------------------------------------------------------------

def _folder_rows(uri: str, exclude: tuple[str, ...], s3: storage.S3Options | None,
                 skipped: Skipped | None = None) -> Iterator[dict]:
    """The folder's inputs as listing rows, streamed (io/inputs.iter_folder owns the name rules)."""
    for item in iter_folder(uri, exclude, s3, skipped):
        yield {"image_uri": item.uri, "key": item.key, "input_size": item.size,
               "input_mtime_ns": item.mtime_ns, "input_etag": item.etag}


def _manifest_batches(uri: str) -> Iterator[pa.RecordBatch]:
    """The manifest's rows in record batches, every column as strings where it is CSV."""
    import pyarrow.csv as pacsv

    fs, path = storage.filesystem(uri)
    if uri.lower().endswith(".parquet"):
        with fs.open_input_file(path) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=CHUNK)
        return
    with fs.open_input_stream(path) as f:
        header = pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=1 << 16)).schema.names
    with fs.open_input_stream(path) as f:
        reader = pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=1 << 22),
                                convert_options=pacsv.ConvertOptions(
                                    column_types={n: pa.string() for n in header}, strings_can_be_null=False))
        yield from reader


_NEEDS_SANITIZING = r"(^/)|(//)|(^|/)\.\.?(/|$)|\\|^[a-zA-Z][a-zA-Z0-9+.-]*://|^[a-zA-Z]:(/|$)|^$"


def _manifest_tables(uri: str, column: str | None) -> Iterator[pa.Table]:
    """Entries of a .csv/.parquet manifest in file order, as tables (image_uri, key, identity), computed per
    batch with Arrow kernels (10^7 rows must not mean 10^7 Python dicts). Read twice: first for the folder
    all entries share (keys are relative to it: the common path of the smallest and largest folder), then
    for the rows."""
    header = next((b.schema.names for b in _manifest_batches(uri)), [])
    if column is None:
        column = next((c for c in MANIFEST_COLUMNS if c in header), None)
    if column is None or column not in header:
        raise InputError(
            f"manifest {uri} has no image column: expected one of {', '.join(MANIFEST_COLUMNS)} "
            f"(or --manifest-column), found {', '.join(map(str, header))}")
    base = storage.parent(uri).rstrip("/") + "/"

    def resolved(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.Array, pa.Array]:
        entries = pc.cast(batch.column(column), pa.string())
        keep = pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(entries), ""), False)
        batch, entries = batch.filter(keep), entries.filter(keep)
        absolute = pc.or_(pc.or_(pc.starts_with(entries, "s3://"), pc.starts_with(entries, "/")),
                          pc.starts_with(entries, names.FILE_SCHEME))
        uris = pc.if_else(absolute, entries, pc.binary_join_element_wise(base, entries, ""))
        paths = pc.replace_substring(pc.replace_substring_regex(uris, "^s3://", ""), "\\", "/")
        return batch, uris, paths

    low = high = None
    for batch in _manifest_batches(uri):
        _, _, paths = resolved(batch)
        if len(paths):
            folders = pc.replace_substring_regex(paths, "(^|/)[^/]*$", "")
            bounds = pc.min_max(folders)
            lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
            low, high = (lo, hi) if low is None else (min(low, lo), max(high, hi))
    try:
        common = posixpath.commonpath([low, high]) if low is not None else ""
    except ValueError:  # mixed absolute and relative paths
        common = ""
    for batch in _manifest_batches(uri):
        batch, uris, paths = resolved(batch)
        if common:
            inside = pc.starts_with(paths, common.rstrip("/") + "/")
            keys = pc.if_else(inside, pc.utf8_slice_codeunits(paths, len(common.rstrip("/")) + 1), paths)
            if not pc.all(inside).as_py():  # rare: fall back to relpath for those
                keys = pa.array([k if ok else posixpath.relpath(p, common) for k, ok, p in
                                 zip(keys.to_pylist(), inside.to_pylist(), paths.to_pylist(), strict=True)],
                                pa.string())
        else:
            keys = paths
        odd = pc.match_substring_regex(keys, _NEEDS_SANITIZING)
        if pc.any(odd).as_py():  # rare: names.stable_key for those (Python), the rest stay as they are
            keys = pa.array([stable_key(k, u) if o else k for k, o, u in
                             zip(keys.to_pylist(), odd.to_pylist(), uris.to_pylist(), strict=True)],
                            pa.string())
        n = len(uris)
        cols = set(batch.schema.names)
        etag = pc.cast(batch.column("etag"), pa.string()) if "etag" in cols else pa.nulls(n, pa.string())
        yield pa.table({
            "image_uri": uris, "key": keys,
            "input_size": _ints(batch.column("size")) if "size" in cols else pa.nulls(n, pa.int64()),
            "input_mtime_ns": (_ints(batch.column("mtime_ns")) if "mtime_ns" in cols
                               else pa.nulls(n, pa.int64())),
            "input_etag": pc.if_else(pc.equal(etag, ""), pa.scalar(None, pa.string()), etag),
        })


def _ints(column: pa.Array) -> pa.Array:
    return pa.array([optional_int(v) for v in column.to_pylist()], pa.int64())


def _row_tables(rows: Iterator[dict], chunk: int) -> Iterator[pa.Table]:
    buffer: list[dict] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= chunk:
            yield pa.Table.from_pylist(buffer)
            buffer = []
    if buffer:
        yield pa.Table.from_pylist(buffer)


def iter_listing(uri: str, column: str | None = None, limit: int | None = None, exclude: tuple[str, ...] = (),
                 s3: storage.S3Options | None = None, truth: dict[str, str] | None = None,
                 chunk: int = CHUNK, skipped: Skipped | None = None) -> Iterator[pa.Table]:
    """The inputs of a run (THE listing: a manifest's entries or a folder's files, the first `limit`) in
    LISTING_SCHEMA tables of about `chunk` rows; what a folder listing passes over by name is counted in
    `skipped` (a manifest's entries are all inputs).

    Manifest duplicates are NOT removed here (that needs every URI): `dedupe` does it per partition.
    """
    from raysegment.io.inputs import is_manifest

    if is_manifest(uri):
        tables = _manifest_tables(uri, column)
    else:
        tables = _row_tables(_folder_rows(uri, exclude, s3, skipped), chunk)
    ordinal = 0
    for table in tables:
        if limit is not None:
            table = table.slice(0, max(0, limit - ordinal))
        n = table.num_rows
        if n == 0:
            if limit is not None and ordinal >= limit:
                break
            continue
        names = pc.replace_substring_regex(table.column("key"), "^.*/", "")
        image_id = pc.replace_substring_regex(names, "\\.[^.]*$", "")
        truth_uri = (pa.array([truth.get(i) for i in image_id.to_pylist()], pa.string()) if truth
                     else pa.nulls(n, pa.string()))
        yield pa.table({
            "image_uri": table.column("image_uri"), "image_id": image_id, "key": table.column("key"),
            "input_size": table.column("input_size").cast(pa.int64()),
            "input_mtime_ns": table.column("input_mtime_ns").cast(pa.int64()),
            "input_etag": table.column("input_etag").cast(pa.string()), "truth_uri": truth_uri,
            "ordinal": pa.array(np.arange(ordinal, ordinal + n), pa.int64()),
        }, schema=LISTING_SCHEMA)
        ordinal += n


def dedupe(listing: pa.Table) -> pa.Table:
    """First occurrence (smallest ordinal) of each image_uri, in listing order."""
    if listing.num_rows == 0:
        return listing
    first = listing.group_by("image_uri").aggregate([("ordinal", "min")]).column("ordinal_min")
    listing = listing.filter(pc.is_in(listing.column("ordinal"), value_set=first))
    return listing.sort_by("ordinal")


# --- results index ----------------------------------------------------------------------------------

def index_files(files: list[str], partitioner: Partitioner, first_seq: int = 0) -> int:
    """Append the summary/identity columns of result `files` (in order) to `partitioner`; `seq` numbers
    rows in reading order (read_results' tie-break). Unreadable (torn) files are skipped. Returns the next
    seq."""
    from raysegment.outputs.results import _read_file

    seq = first_seq
    for uri in files:
        table = _read_file(uri, _INDEX_COLUMNS)
        if table is None or table.num_rows == 0:
            continue
        table = conform(table, INDEX_SCHEMA.remove(INDEX_SCHEMA.get_field_index("seq")))
        table = table.append_column("seq", pa.array(np.arange(seq, seq + table.num_rows), pa.int64()))
        seq += table.num_rows
        partitioner.add(table)
    return seq


def latest(index: pa.Table) -> pa.Table:
    """One row per image_uri as read_results picks it (results.latest_indices, the one rule), with `seq`
    (reading order over all result files) as the last tie-break: rows of one image may sit anywhere in a
    partition that merges earlier and new results."""
    if index.num_rows == 0:
        return index
    return index.take(latest_indices(index, index.column("seq").to_numpy()))


def _same(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """Null-safe equality: both null, or both set and equal."""
    return pc.or_(pc.and_(pc.is_null(a), pc.is_null(b)), pc.fill_null(pc.equal(a, b), False))


def _matches(now: pa.ChunkedArray, before: pa.ChunkedArray) -> pa.ChunkedArray:
    """An identity value matches when it is unknown now, or equal to the one recorded."""
    return pc.or_(pc.is_null(now), pc.fill_null(pc.equal(now, before), False))


def todo(listing: pa.Table, done: pa.Table, model_id: str, calibration_id: str | None = None,
         modalities: tuple[str, ...] | None = RADIOGRAPH_MODALITIES) -> pa.Table:
    """The listed inputs resume cannot skip (THE resume rule), given the latest rows `done` (see latest).

    Done, so skipped by resume, when the identity (size, mtime, ETag) matches wherever it is known now (a
    manifest without identity columns trusts the earlier row) and the latest row is
      - ok, of this model and QC calibration (quality_score and flags depend on it), the same ground truth
        (so a rerun with --ground-truth adds metrics), and this schema version, or an older one from
        RESUMES_FROM on for an input that was no DICOM and not inversion-corrected (results.RESUMES_FROM:
        those rows are what this version writes);
      - skipped (not a chest film), written by this schema version, whatever the model, unless it was
        skipped for a DICOM Modality that `modalities` (this run's --modalities) now segments.
    Error rows are always retried."""
    if listing.num_rows == 0 or done.num_rows == 0:
        return listing
    status = done.column("status")
    done = done.filter(pc.fill_null(pc.is_in(status, value_set=pa.array(["ok", "skipped"])), False))
    if done.num_rows == 0:
        return listing
    prev = done.select(["image_uri", "status", *IDENTITY_COLUMNS])
    prev = prev.rename_columns(["image_uri", "prev_status", *[f"prev_{c}" for c in IDENTITY_COLUMNS]])
    joined = listing.join(prev, keys="image_uri", join_type="left outer")
    col = joined.column
    version = col("prev_schema_version")
    same_identity = pa.array(np.ones(joined.num_rows, bool))
    for c in ("input_size", "input_mtime_ns", "input_etag"):
        same_identity = pc.and_(same_identity, _matches(col(c), col(f"prev_{c}")))

    this_version = pc.fill_null(pc.equal(version, SCHEMA_VERSION), False)
    carried = pc.and_(pc.fill_null(pc.greater_equal(version, RESUMES_FROM), False),
                      pc.and_(pc.invert(pc.fill_null(pc.equal(col("prev_image_format"), "dicom"), False)),
                              pc.invert(pc.fill_null(col("prev_inversion_corrected"), False))))
    calibration = pa.array([calibration_id] * joined.num_rows, pa.string())
    ok_done = pc.and_(pc.fill_null(pc.equal(col("prev_status"), "ok"), False),
                      pc.fill_null(pc.equal(col("prev_model_id"), model_id), False))
    ok_done = pc.and_(ok_done, _same(col("truth_uri"), col("prev_truth_uri")))
    ok_done = pc.and_(ok_done, _same(calibration, col("prev_calibration_id")))
    ok_done = pc.and_(ok_done, pc.or_(this_version, carried))

    reason = col("prev_skip_reason")
    if modalities is None:  # every modality is segmented now: redo every modality skip
        redo = pc.fill_null(pc.starts_with(reason, MODALITY_REASON_PREFIX), False)
    else:
        reasons = pa.array([modality_reason(m.upper()) for m in modalities], pa.string())
        redo = pc.fill_null(pc.is_in(reason, value_set=reasons), False)
    skip_done = pc.and_(pc.fill_null(pc.equal(col("prev_status"), "skipped"), False), this_version)
    skip_done = pc.and_(skip_done, pc.invert(redo))

    is_done = pc.and_(same_identity, pc.or_(ok_done, skip_done))
    return joined.filter(pc.invert(is_done)).select(listing.column_names).sort_by("ordinal")


class TodoWriter:
    """Todo rows -> Parquet parts of `rows_per_file` rows under `uri` (read by Ray Data on any node)."""

    def __init__(self, uri: str, rows_per_file: int, s3: storage.S3Options | None = None) -> None:
        self.uri, self.rows_per_file, self.s3 = uri, max(1, rows_per_file), s3
        self.buffer: list[pa.Table] = []
        self.files: list[str] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        self.buffer.append(table.select(INPUT_SCHEMA.names))
        while sum(t.num_rows for t in self.buffer) >= self.rows_per_file:
            merged = pa.concat_tables(self.buffer)
            self._write(merged.slice(0, self.rows_per_file))
            rest = merged.slice(self.rows_per_file)
            self.buffer = [rest] if rest.num_rows else []

    def _write(self, table: pa.Table) -> None:
        fs, path = storage.filesystem(self.uri, self.s3)
        fs.create_dir(path, recursive=True)
        name = f"{path}/part-{len(self.files):05d}.parquet"
        with fs.open_output_stream(name) as f:
            pq.write_table(table, f)
        self.files.append(storage.to_uri(name, self.uri))

    def close(self) -> None:
        if self.buffer:
            self._write(pa.concat_tables(self.buffer))
            self.buffer = []


class Scratch:
    """A local scratch folder for the driver's partition files, removed on exit."""

    def __enter__(self):  # -> Scratch
        self.root = tempfile.mkdtemp(prefix="raysegment-work-")
        return self

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def earlier_files(output: str) -> list[str]:
    return result_files(output)
