"""The production listing and resume rule of bulk inference (raysegment/infer/worklist.py) as tiny
per-input questions, so tests can ask "what does a run list?" and "may resume skip this input?" directly.

These drive the same functions a run calls (infer/pipeline.py): iter_listing -> dedupe for the listing,
index_files -> latest -> todo for the resume. They add no rule of their own: a test written against them
fails when the production listing or resume changes.
"""

from __future__ import annotations

import pyarrow as pa

from raysegment.infer import worklist
from raysegment.outputs.results import IDENTITY_COLUMNS


def listed(uri: str, **kw) -> list[dict]:
    """Every input a run over `uri` lists, in listing order, duplicates removed (first kept): the rows of
    worklist.iter_listing after worklist.dedupe, as dicts (image_uri, image_id, key, input_size,
    input_mtime_ns, input_etag, truth_uri, ordinal). `kw` goes to iter_listing (column, limit, exclude,
    s3, truth, chunk)."""
    tables = list(worklist.iter_listing(uri, **kw))
    listing = pa.concat_tables(tables) if tables else worklist.LISTING_SCHEMA.empty_table()
    return worklist.dedupe(listing).to_pylist()


def done_identities(output: str) -> dict[str, dict]:
    """image_uri -> IDENTITY_COLUMNS of the rows resume may skip by, as a run reads them: the earlier result
    files indexed (worklist.index_files), the latest row per image (worklist.latest), its ok rows only."""
    with worklist.Scratch() as scratch:
        index = worklist.Partitioner(worklist.INDEX_SCHEMA, scratch.path("index"))
        worklist.index_files(worklist.earlier_files(output), index)
        index.close()
        rows = []
        for p in range(index.nparts):
            rows += worklist.latest(index.part(p)).to_pylist()
    return {r["image_uri"]: {c: r[c] for c in IDENTITY_COLUMNS} for r in rows if r["status"] == "ok"}


def skipped(before: dict | None, model_id: str, size: int | None, mtime_ns: int | None, etag: str | None,
            truth_uri: str | None, calibration_id: str | None = None, status: str = "ok") -> bool:
    """Would a run with `model_id` / `calibration_id` skip an input listed now with this size, mtime, ETag
    and ground truth, given its earlier result row `before` (IDENTITY_COLUMNS values; None: never run)?
    One listing row and one index row through worklist.latest and worklist.todo."""
    uri = "s3://bucket/in/x.png"
    listing = pa.Table.from_pylist([{
        "image_uri": uri, "image_id": "x", "key": "x.png", "input_size": size, "input_mtime_ns": mtime_ns,
        "input_etag": etag, "truth_uri": truth_uri, "ordinal": 0}], schema=worklist.LISTING_SCHEMA)
    rows = [] if before is None else [
        {"image_uri": uri, "run_id": "r1", "status": status, "seq": 0, **before}]
    done = worklist.conform(pa.Table.from_pylist(rows), worklist.INDEX_SCHEMA)
    return worklist.todo(listing, worklist.latest(done), model_id, calibration_id).num_rows == 0
