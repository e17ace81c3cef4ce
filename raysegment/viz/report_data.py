"""What the run report (viz/report.py) shows, read from a results folder in ONE streamed pass, with the run
summary's own code: driver memory stays flat at any number of rows.

    result files (file by file, REPORT_COLUMNS, no masks) --hash(image_uri)--> worklist.Partitioner
    per partition: worklist.latest (THE latest-row rule of read_results and resume)
        -> results.SummaryAccumulator (the summary.json code: exact counts, a bounded sample per measure)
        -> the review queue: the `queue` rows to look at first, an exact bottom-N selection (QUEUE_ORDER)
        -> non-ok rows by status and reason (exact counts, a few examples each)
        -> per top-level folder (site) counts, CTR > 0.5 count, model / calibration / schema versions
    + OUTPUT/summary.json, runs/<run_id>/run.json and summary.json of the last MAX_RUNS runs, todo/ markers

Nothing here raises on malformed results: an unreadable file, a file of unexpected column types, a missing
or broken summary.json, an older schema version each become a note the page shows.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysegment.infer import worklist
from raysegment.io import storage
from raysegment.outputs.results import (
    GT_METRICS,
    SCHEMA,
    SCHEMA_VERSION,
    SUMMARY_COLUMNS,
    SummaryAccumulator,
    _read_file,
    runs_uri,
)

log = logging.getLogger(__name__)

# The columns the report reads (docs/output_schema.md, "The run report"); never the masks: the queue's masks
# are read afterwards for its rows only (viz.show.read_masks).
REPORT_COLUMNS = list(dict.fromkeys([
    "image_uri", "image_id", "run_id", "status", "error_stage", "error_type", "error", "model_id",
    "calibration_id", "schema_version", *SUMMARY_COLUMNS, "lung_area_px", "lung_area_cm2", "height", "width",
    "mask_uri"]))
_STRUCTURES = pa.field("structures", pa.list_(pa.struct([("name", pa.string()), ("dice", pa.float64())])))
REPORT_SCHEMA = pa.schema([_STRUCTURES if c == "structures" else SCHEMA.field(c).with_nullable(True)
                           for c in REPORT_COLUMNS] + [("seq", pa.int64())])
# The queue's order: QC-flagged first; then quality_score ascending (rows without one after); then more QC
# reasons first, then lower mean confidence (an empty mask, without a confidence, first); then image_uri.
QUEUE_ORDER = "QC-flagged first, then quality_score ascending (none last), then QC reasons, mean confidence"
MAX_GROUPS = 100  # status/reason groups counted apart; further reasons count as "other"
EXAMPLES = 3  # example rows per group
MAX_SITES = 10_000  # distinct top-level folders tracked; further ones count as "other"
MAX_RUNS = 20  # runs whose run.json / summary.json are read
TOP_LEVEL = "(top level)"
OTHER = "(other)"
NO_REASON = "(no reason recorded)"


@dataclass
class Group:
    """Rows of one status (not ok) and reason: exact count, a few examples (image_uri, image_id, error)."""

    status: str
    reason: str
    count: int = 0
    examples: list[dict] = field(default_factory=list)


@dataclass
class RunInfo:
    run_id: str
    rows: int = 0  # latest rows (one per image) that this run wrote
    files: int = 0
    record: dict | None = None  # run.json
    summary: dict | None = None  # its summary.json: written only when the run finished
    in_progress: bool = False  # todo/<run_id> exists: running, or killed before its end


@dataclass
class SiteStats:
    images: int = 0
    ok: int = 0
    errors: int = 0
    other: int = 0  # rows of another status (skipped, ...)
    flagged: int = 0
    quality_sum: float = 0.0
    quality_n: int = 0
    dice_sum: float = 0.0
    dice_n: int = 0

    def add(self, other: SiteStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class ReportData:
    results: str
    summary: dict  # SummaryAccumulator.result() over the latest row of every image in the folder
    samples: dict[str, tuple[np.ndarray, int]]  # measure -> (bounded sample, exact n)
    statuses: dict[str, int]  # status -> rows (latest per image)
    groups: list[Group]  # non-ok rows by status and reason, most rows first
    queue: list[dict]  # the rows to look at first, in QUEUE_ORDER
    queue_asked: int
    runs: list[RunInfo]  # the last MAX_RUNS runs, newest first
    n_runs: int
    latest_summary: dict | None  # OUTPUT/summary.json
    files: int = 0
    unreadable: list[str] = field(default_factory=list)  # result files that could not be read
    rows_read: int = 0  # every row of every run (history included)
    ctr_over: int = 0  # ok rows with CTR > 0.5 (exact)
    site_prefix: str = ""
    sites: list[tuple[str, SiteStats]] = field(default_factory=list)  # most images first (+ OTHER)
    n_sites: int = 0
    schema_versions: dict = field(default_factory=dict)  # version -> rows
    model_ids: dict = field(default_factory=dict)
    calibration_ids: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the page must say about the folder itself

    @property
    def images(self) -> int:
        return self.summary["images"]


class _ReportSummary(SummaryAccumulator):
    """The run summary's accumulator, with the lung area in cm2 sampled too (for its plot)."""

    MEASURES = (*SummaryAccumulator.MEASURES, "lung_area_cm2")


FLUSH_ROWS = 256  # the report's rows are wider than the worklist's index: smaller write buffers


class _Index(worklist.Partitioner):
    """The partitioner of the report's rows that also keeps the smallest and largest folder of the URIs
    (their common part is the root the per-folder table is relative to)."""

    def __init__(self, scratch: str) -> None:
        super().__init__(REPORT_SCHEMA, scratch, flush_rows=FLUSH_ROWS)
        self.low: str | None = None
        self.high: str | None = None

    def add(self, table: pa.Table) -> None:
        uris = pc.drop_null(table.column("image_uri"))
        if len(uris):
            folders = pc.replace_substring_regex(uris, "[^/]*$", "")  # "s3://b/site/" of "s3://b/site/x.png"
            bounds = pc.min_max(folders)
            lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
            self.low = lo if self.low is None else min(self.low, lo)
            self.high = hi if self.high is None else max(self.high, hi)
        super().add(table)

    def prefix(self) -> str:
        """The longest folder prefix (ending in '/') all URIs share."""
        if self.low is None:
            return ""
        common = os.path.commonprefix([self.low, self.high])
        return common[: common.rfind("/") + 1]


def _json(uri: str, notes: list[str] | None = None, what: str = "") -> dict | None:
    """A JSON object file, or None when absent; a broken one adds a note."""
    try:
        if not storage.exists(uri):
            return None
        value = json.loads(storage.read_text(uri))
        if not isinstance(value, dict):
            raise TypeError("not a JSON object")
        return value
    except (OSError, ValueError, TypeError) as e:
        if notes is not None:
            notes.append(f"{what or storage.basename(uri)} could not be read ({type(e).__name__}: "
                         f"{storage.redact(str(e))[:200]}); the numbers below come from the rows themselves")
        return None


def _listing(results: str) -> tuple[list[str], dict[str, RunInfo], set[str]]:
    """(result files sorted, run id -> RunInfo with its file count, run ids with a todo/ folder)."""
    runs: dict[str, RunInfo] = {}
    files = []
    root = runs_uri(results)
    if storage.exists(root):
        base = storage.filesystem(root)[1].rstrip("/") + "/"
        for entry in storage.list_files(root):
            path = storage.filesystem(entry.uri)[1]
            run_id = path[len(base):].split("/", 1)[0] if path.startswith(base) else ""
            info = runs.setdefault(run_id, RunInfo(run_id))
            if entry.uri.endswith(".parquet"):
                files.append(entry.uri)
                info.files += 1
    todo = storage.join(results, "todo")
    pending = set()
    if storage.exists(todo):
        base = storage.filesystem(todo)[1].rstrip("/") + "/"
        for entry in storage.list_files(todo):
            path = storage.filesystem(entry.uri)[1]
            if path.startswith(base):
                pending.add(path[len(base):].split("/", 1)[0])
    return sorted(files), runs, pending


def _index(files: list[str], index: _Index, notes: list[str]) -> tuple[int, list[str]]:
    """Every result file's REPORT_COLUMNS into `index`, `seq` numbering rows in reading order (as
    worklist.index_files does). Returns (rows read, files that could not be read)."""
    base = REPORT_SCHEMA.remove(REPORT_SCHEMA.get_field_index("seq"))
    seq, unreadable = 0, []
    for uri in files:
        table = _read_file(uri, REPORT_COLUMNS)  # a torn file: None (logged)
        if table is not None and table.num_rows:
            try:
                table = worklist.conform(table, base)
            except (pa.ArrowException, ValueError) as e:  # e.g. a column of another type: not our file
                log.warning("skipping result file %s: %s", uri, e)
                table = None
        if table is None:
            unreadable.append(uri)
            continue
        if not table.num_rows:
            continue
        table = table.append_column("seq", pa.array(np.arange(seq, seq + table.num_rows), pa.int64()))
        seq += table.num_rows
        index.add(table)
    return seq, unreadable


def _count(counter: Counter, column: pa.ChunkedArray, limit: int = MAX_GROUPS) -> None:
    values = pc.value_counts(pc.fill_null(pc.cast(column, pa.string()), "(none)"))
    for value, n in zip(values.field("values").to_pylist(), values.field("counts").to_pylist(), strict=True):
        if value in counter or len(counter) < limit:
            counter[value] += n
        else:
            counter[OTHER] += n


def _reasons(rows: pa.Table) -> list[str]:
    """The reason of each non-ok row: `stage/ErrorType` for errors (summary.json's errors_by_reason); for
    another status (a skip) its error_type, else its message without the file's name, else NO_REASON."""
    out = []
    for status, stage, kind, error, uri in zip(*(rows.column(c).to_pylist() for c in (
            "status", "error_stage", "error_type", "error", "image_uri")), strict=True):
        if status == "error":
            out.append(f"{stage}/{kind}")
        elif kind:
            out.append(kind)
        elif error:
            name = storage.basename(uri or "")
            text = error.replace(uri, "") if uri else error
            text = text.replace(name, "") if name else text
            out.append(re.sub(r"^[\s:,-]+", "", " ".join(text.split()))[:80] or NO_REASON)
        else:
            out.append(NO_REASON)
    return out


def _queue_frame(ok: pa.Table):
    """QUEUE_ORDER's sort keys of ok rows, one column each (ascending sorts them in the queue's order)."""
    import pandas as pd

    def floats(name: str, fill: float) -> np.ndarray:
        return np.asarray(pc.fill_null(pc.cast(ok.column(name), pa.float64()), fill).to_numpy(), np.float64)

    flagged = np.asarray(pc.fill_null(ok.column("qc_flag"), False).to_numpy(zero_copy_only=False), bool)
    quality = floats("quality_score", np.nan)
    reasons = np.asarray(pc.fill_null(pc.list_value_length(ok.column("qc_reasons")), 0).to_numpy(), np.int64)
    return pd.DataFrame({
        "unflagged": ~flagged, "no_quality": np.isnan(quality), "quality": np.nan_to_num(quality, nan=0.0),
        "fewer_reasons": -reasons,
        "confidence": floats("mean_confidence", -1.0),  # none: an empty mask, the likeliest failure
        "uri": np.asarray(pc.fill_null(ok.column("image_uri"), "").to_numpy(zero_copy_only=False), object),
    })


class _Queue:
    """The exact bottom-N of every ok row by QUEUE_ORDER, a partition at a time (N candidates kept)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.kept: list[tuple[tuple, dict]] = []

    def add(self, ok: pa.Table) -> None:
        if self.n <= 0 or ok.num_rows == 0:
            return
        frame = _queue_frame(ok)
        chosen = frame.sort_values(list(frame.columns), kind="mergesort").head(self.n)
        rows = ok.take(pa.array(chosen.index.to_numpy(), pa.int64())).drop_columns(["seq"]).to_pylist()
        keys = list(chosen.itertuples(index=False, name=None))
        self.kept = sorted([*self.kept, *zip(keys, rows, strict=True)], key=lambda kv: kv[0])[: self.n]

    def rows(self) -> list[dict]:
        return [row for _, row in self.kept]


def _site_column(uris: pa.ChunkedArray, prefix: str) -> np.ndarray:
    """The top-level folder below `prefix` (which every URI starts with) of each URI; TOP_LEVEL for a file
    directly in it."""
    rest = pc.utf8_slice_codeunits(pc.fill_null(uris, ""), len(prefix))
    first = pc.replace_substring_regex(rest, "(?s)/.*$", "")
    sites = pc.if_else(pc.match_substring(rest, "/"), first, TOP_LEVEL)
    return np.asarray(sites.to_numpy(zero_copy_only=False), object)


def _add_sites(sites: dict[str, SiteStats], rows: pa.Table, prefix: str) -> None:
    import pandas as pd

    status = rows.column("status").to_numpy(zero_copy_only=False)
    frame = pd.DataFrame({
        "site": _site_column(rows.column("image_uri"), prefix),
        "ok": status == "ok", "errors": status == "error",
        "flagged": np.asarray(pc.fill_null(rows.column("qc_flag"), False).to_numpy(zero_copy_only=False),
                              bool),
        "quality": np.asarray(pc.fill_null(pc.cast(rows.column("quality_score"), pa.float64()), np.nan)
                              .to_numpy(), np.float64),
        "dice": np.asarray(pc.fill_null(rows.column("dice"), np.nan).to_numpy(), np.float64),
    })
    frame["flagged"] &= frame["ok"]
    frame.loc[~frame["ok"], ["quality", "dice"]] = np.nan
    grouped = frame.groupby("site", sort=False).agg(
        images=("ok", "size"), ok=("ok", "sum"), errors=("errors", "sum"), flagged=("flagged", "sum"),
        quality_sum=("quality", "sum"), quality_n=("quality", "count"), dice_sum=("dice", "sum"),
        dice_n=("dice", "count"))
    for g in grouped.itertuples():
        site = g.Index
        part = SiteStats(int(g.images), int(g.ok), int(g.errors), int(g.images - g.ok - g.errors),
                         int(g.flagged), float(g.quality_sum), int(g.quality_n), float(g.dice_sum),
                         int(g.dice_n))
        key = site if site in sites or len(sites) < MAX_SITES else OTHER
        sites.setdefault(key, SiteStats()).add(part)


def collect(results: str, queue: int = 24, site_rows: int = 50) -> ReportData:
    """Everything the report shows about `results` (see the module docstring). Never raises for what the
    folder holds; a folder that does not exist is the caller's check."""
    notes: list[str] = []
    files, runs, pending = _listing(results)
    latest_summary = _json(storage.join(results, "summary.json"), notes, "summary.json")
    acc, picks = _ReportSummary(examples=0), _Queue(queue)
    statuses: Counter = Counter()
    groups: dict[tuple[str, str], Group] = {}
    versions: Counter = Counter()
    models: Counter = Counter()
    calibrations: Counter = Counter()
    run_rows: Counter = Counter()
    sites: dict[str, SiteStats] = {}
    ctr_over = 0
    with worklist.Scratch() as scratch:
        index = _Index(scratch.path("report"))
        rows_read, unreadable = _index(files, index, notes)
        index.close()
        prefix = index.prefix()
        for p in range(index.nparts):
            rows = worklist.latest(index.part(p))
            if rows.num_rows == 0:
                continue
            acc.add(rows)
            _count(statuses, rows.column("status"))
            _count(versions, rows.column("schema_version"))
            _count(models, rows.column("model_id"))
            _count(calibrations, rows.column("calibration_id"))
            _count(run_rows, rows.column("run_id"), limit=10**6)
            ok_mask = pc.fill_null(pc.equal(rows.column("status"), "ok"), False)
            ok = rows.filter(ok_mask)
            picks.add(ok)
            ctr_over += int(pc.sum(pc.fill_null(pc.greater(ok.column("ctr"), 0.5), False)).as_py() or 0)
            _add_groups(groups, rows.filter(pc.invert(ok_mask)))
            _add_sites(sites, rows, prefix)

    samples = {name: acc.sample(name) for name in (*acc.MEASURES, "ctr", *GT_METRICS)}
    for name, info in runs.items():
        info.rows = run_rows.get(name, 0)
        info.in_progress = name in pending
    for name in pending - set(runs):
        runs[name] = RunInfo(name, in_progress=True)
    recent = sorted(runs.values(), key=lambda r: r.run_id, reverse=True)[:MAX_RUNS]
    for info in recent:
        folder = storage.join(runs_uri(results), info.run_id)
        info.record = _json(storage.join(folder, "run.json"))
        info.summary = _json(storage.join(folder, "summary.json"))
    data = ReportData(
        results=results, summary=acc.result(), samples=samples, statuses=dict(statuses.most_common()),
        groups=sorted(groups.values(), key=lambda g: (-g.count, g.status, g.reason)), queue=picks.rows(),
        queue_asked=queue, runs=recent, n_runs=len(runs), latest_summary=latest_summary, files=len(files),
        unreadable=unreadable, rows_read=rows_read, ctr_over=ctr_over, site_prefix=prefix,
        schema_versions=dict(versions.most_common()), model_ids=dict(models.most_common()),
        calibration_ids=dict(calibrations.most_common()), notes=notes)
    ordered = sorted(sites.items(), key=lambda kv: (kv[0] == OTHER, -kv[1].images, kv[0]))
    data.n_sites = len(ordered)
    if len(ordered) > site_rows:
        rest = SiteStats()
        for _, s in ordered[site_rows:]:
            rest.add(s)
        ordered = [*ordered[:site_rows], (OTHER, rest)]
    data.sites = ordered
    _folder_notes(data)
    return data


def _add_groups(groups: dict[tuple[str, str], Group], bad: pa.Table) -> None:
    if bad.num_rows == 0:
        return
    statuses = [s if s is not None else "(none)" for s in bad.column("status").to_pylist()]
    keys = list(zip(statuses, _reasons(bad), strict=True))
    for i, key in enumerate(keys):
        if key not in groups and len(groups) >= MAX_GROUPS:
            key = (key[0], OTHER)
        group = groups.setdefault(key, Group(*key))
        group.count += 1
        if len(group.examples) < EXAMPLES:
            row = bad.slice(i, 1).select(["image_uri", "image_id", "error", "error_stage"]).to_pylist()[0]
            group.examples.append(row)


def _folder_notes(data: ReportData) -> None:
    """What the page must say about the folder before any number: nothing there, files that could not be
    read, a run that did not finish, rows of another schema version."""
    notes = data.notes
    if not data.files:
        notes.append("no result files: nothing has been written to this folder yet (an empty folder, or a "
                     "run stopped before its first file)")
    elif data.images == 0:
        notes.append("no result rows could be read from the result files")
    if data.unreadable:
        notes.append(f"{len(data.unreadable)} of {data.files} result files could not be read and were left "
                     "out (a run killed while writing leaves a partial file: its images are simply not done "
                     f"yet); first: {data.unreadable[0]}")
    unfinished = [run for run in data.runs if run.summary is None]
    for run in unfinished[:3]:
        state = ("is still running, or was stopped before its end" if run.in_progress
                 else "was stopped before its end")
        notes.append(f"run {run.run_id} has no summary.json: it {state} ({run.rows} of its rows are the "
                     "latest of their image); run the same `raysegment infer` command again to resume")
    if len(unfinished) > 3:
        notes.append(f"{len(unfinished) - 3} more of the last {len(data.runs)} runs have no summary.json")
    if data.latest_summary is None and data.files and not any("summary.json" in n for n in notes):
        notes.append("no summary.json in the folder: no run has finished here yet")
    older = {v: n for v, n in data.schema_versions.items() if v not in (str(SCHEMA_VERSION), "(none)")}
    for version, n in older.items():
        newer = version.isdigit() and int(version) > SCHEMA_VERSION
        notes.append(f"{n} rows were written with schema version {version} ("
                     + ("newer than this raysegment's; columns it does not know are not shown)" if newer else
                        "older: columns added since are empty for them, and the sections that need them say "
                        "so)"))
