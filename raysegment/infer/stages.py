"""The three Ray Data stages of bulk inference and what travels between them.

    todo part URIs -> read + decode + preprocess   CPU tasks    -> uint8 SxS bytes   decode_parts
                   -> forward                      actor pool   -> uint8 CxSxS prob  InferActor
                   -> postprocess + row            CPU tasks    -> results rows      postprocess_batch

Between stages only compact bytes travel: the model input as uint8 SxS (64 KB at 256 px) and the
probability as uint8 CxSxS (x 255), never float arrays. Every stage catches errors per row: a failing row
gets status "error", the stage and the reason, skips the later stages and still reaches the output.

What a file IS is decided here, in the decode tasks, from its bytes (never in the driver's listing):
  - named like an image (names.is_image_name: .png, .dcm, a DICOM UID, ...): read whole in ONE request
    (the common case costs nothing extra) and decoded; if it does not decode it is an ERROR (the user
    expected a film), unless it is a DICOM object without an image or of another modality (skipped);
  - any other name (IM0001, README, x.xml, scan.IMA.bak): its first SNIFF_BYTES are read (a range read on
    S3) and model_input.triage decides: not an image -> a row with status "skipped" and its reason,
    nothing more read; bytes of an image format -> the rest is read and it is decoded like the above
    (an error when it does not decode: its bytes said "image").
"""


from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from raysegment.data.datasets import parse_truth
from raysegment.data.model_input import (
    LATERAL_NOTE,
    NOT_AN_IMAGE_REASON,
    SNIFF_BYTES,
    InputOptions,
    decode_frame,
    to_model_input,
    triage,
)
from raysegment.data.preprocess import PreprocessConfig, geometry
from raysegment.errors import NotAChestFilmError, NotAnImageError
from raysegment.infer.archive import write_dicom_seg
from raysegment.infer.worklist import INPUT_SCHEMA
from raysegment.io import names, storage
from raysegment.io.decode import encode_mask_png, sniff_format
from raysegment.io.names import mask_key
from raysegment.outputs.results import SCHEMA
from raysegment.outputs.rows import (
    RowOptions,
    base_row,
    input_fields,
    mark_error,
    mark_skipped,
    result_row,
    spacing_of,
)
from raysegment.postprocess.masks import PostprocessConfig
from raysegment.postprocess.quality import Calibration
from raysegment.postprocess.scoring import score

# torch is imported lazily (actor, driver): the CPU stage tasks never need it, and importing it costs each
# new worker process seconds and hundreds of MB.
CPU_BATCH = 8  # images per actor call on CPU: ~1 s of work, amortizes Ray overhead, short tail at the end


# --- stage schemas: what travels between stages ---------------------------------------------------

_STATUS_FIELDS = [("status", pa.string()), ("error_stage", pa.string()), ("error_type", pa.string()),
                  ("error", pa.string()), ("skip_reason", pa.string())]
DECODED_SCHEMA = pa.schema([
    *INPUT_SCHEMA, *_STATUS_FIELDS, SCHEMA.field("image_format"), SCHEMA.field("bit_depth"),
    SCHEMA.field("height"), SCHEMA.field("width"), SCHEMA.field("pixel_spacing_row_mm"),
    SCHEMA.field("pixel_spacing_col_mm"), SCHEMA.field("exif_rotation"), SCHEMA.field("inversion_corrected"),
    SCHEMA.field("qc_notes"), ("image", pa.binary()),  # uint8 SxS model input, row-major
    SCHEMA.field("read_ms"), SCHEMA.field("decode_ms"),
])
INFERRED_SCHEMA = pa.schema([
    *[f for f in DECODED_SCHEMA if f.name != "image"],
    ("prob", pa.binary()),  # uint8 CxSxS probability x 255, row-major (C: the model's structures)
    SCHEMA.field("infer_ms"),
])


def _fail(row: dict, stage: str, error: BaseException) -> None:
    """Mark a row as failed at `stage` with a one-line, credential-free reason (outputs/rows.py)."""
    mark_error(row, stage, error)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


# --- stage 1: read + decode + preprocess (CPU tasks) ----------------------------------------------

DEFAULT_OPTIONS = InputOptions()

READ_AHEAD = 16  # concurrent object reads per decode task: hides per-request latency (40 ms on S3)
# Rows per block between stages (decode yields blocks this size; actor calls still take batch_size rows).
# Every block is an object the driver owns and tracks: 8-row blocks made driver memory grow with the archive.
BLOCK_ROWS = 64


@dataclass
class Read:
    """What the read step got for one row: the bytes, or why not (an error, or the reason it is skipped)."""

    data: bytes | None = None
    error: BaseException | None = None
    ms: float = 0.0
    skip: str | None = None
    skip_format: str | None = None  # what the first bytes were, when known (a DICOM structured report)


def _read_row(row: dict, s3: storage.S3Options, options: InputOptions = DEFAULT_OPTIONS) -> Read:
    """A file named like an image: the whole file in one request. Any other: its first SNIFF_BYTES, and the
    rest only when model_input.triage finds an image format there."""
    t0 = time.perf_counter()
    uri = row["image_uri"]
    try:
        if names.is_image_name(uri):
            return Read(storage.get_object(uri, s3), ms=_ms(t0))
        # read even when the listing says 0 bytes: a folder, FIFO or dangling link must say what it is
        head = storage.read_head(uri, SNIFF_BYTES, s3)
        skip = triage(head, storage.basename(uri), row.get("input_size"), options)
        if skip is not None:
            return Read(skip=skip, ms=_ms(t0), skip_format=sniff_format(head) if head else None)
        rest = storage.read_range(uri, len(head), None, s3) if len(head) == SNIFF_BYTES else b""
        return Read(head + rest, ms=_ms(t0))
    except Exception as e:  # noqa: BLE001 - any per-row failure becomes an error row
        return Read(error=e, ms=_ms(t0))


def _decode_row(row: dict, read: Read, preprocess: PreprocessConfig, spacing_mm: float | None,
                options: InputOptions = DEFAULT_OPTIONS) -> None:
    """Read result -> the row's input columns and its uint8 SxS model input (data/model_input.py: the two
    steps apart, so an error row says whether decoding or preprocessing failed), or a skipped row."""
    row.update(status="ok", image=None)
    row["read_ms"] = read.ms
    if read.error is not None:
        return _fail(row, "read", read.error)
    if read.skip is not None:
        row["image_format"] = read.skip_format
        return mark_skipped(row, read.skip)
    data = read.data
    if row["input_size"] is None:  # manifests may not say; record what we read
        row["input_size"] = len(data)
    t0 = time.perf_counter()
    name = storage.basename(row["image_uri"])
    try:  # the file name prefixes its errors
        frame = decode_frame(data, name, options)
    except NotAChestFilmError as e:  # a DICOM without an image, or of another modality: no failure
        row["image_format"] = "dicom"
        return mark_skipped(row, e.reason)
    except NotAnImageError as e:
        if names.is_image_name(row["image_uri"]):  # named like a film, and no image: re-copy it
            return _fail(row, "decode", e)
        return mark_skipped(row, NOT_AN_IMAGE_REASON)
    except Exception as e:  # noqa: BLE001 - any per-row failure becomes an error row
        return _fail(row, "decode", e)
    row.update(input_fields(frame, spacing_mm))
    try:
        model_input, _ = to_model_input(frame, preprocess)
    except Exception as e:  # noqa: BLE001 - any per-row failure becomes an error row
        return _fail(row, "preprocess", e)
    row["image"] = model_input.tobytes()
    row["decode_ms"] = _ms(t0)


def decode_batch(batch: pa.Table, preprocess: PreprocessConfig, spacing_mm: float | None,
                 s3: storage.S3Options, out_rows: int = CPU_BATCH, options: InputOptions = DEFAULT_OPTIONS
                 ) -> Iterator[pa.Table]:
    """INPUT_SCHEMA rows -> DECODED_SCHEMA tables of `out_rows` (image = uint8 SxS model input, or null on
    error). Up to READ_AHEAD reads are in flight while rows decode, one GET per object (no HEAD)."""
    from concurrent.futures import ThreadPoolExecutor

    _single_threaded_cv2()
    rows = batch.to_pylist()
    done: list[dict] = []
    with ThreadPoolExecutor(READ_AHEAD) as pool:
        pending: collections.deque = collections.deque()
        ahead = iter(rows)
        for row in itertools.islice(ahead, READ_AHEAD):
            pending.append(pool.submit(_read_row, row, s3, options))
        for row in rows:
            read = pending.popleft().result()
            nxt = next(ahead, None)
            if nxt is not None:
                pending.append(pool.submit(_read_row, nxt, s3, options))
            _decode_row(row, read, preprocess, spacing_mm, options)
            done.append(row)
            if len(done) >= out_rows:
                yield pa.Table.from_pylist(done, schema=DECODED_SCHEMA)
                done = []
    if done:
        yield pa.Table.from_pylist(done, schema=DECODED_SCHEMA)


def decode_parts(batch: pa.Table, preprocess: PreprocessConfig, spacing_mm: float | None,
                 s3: storage.S3Options, out_rows: int = CPU_BATCH, options: InputOptions = DEFAULT_OPTIONS
                 ) -> Iterator[pa.Table]:
    """Todo part URIs ("part" column) -> DECODED_SCHEMA tables of `out_rows` (see decode_batch)."""
    import pyarrow.parquet as pq

    for uri in batch.column("part").to_pylist():
        fs, path = storage.filesystem(uri, s3)
        with fs.open_input_file(path) as f:
            inputs = pq.read_table(f).select(INPUT_SCHEMA.names)
        yield from decode_batch(inputs, preprocess, spacing_mm, s3, out_rows, options)


def _single_threaded_cv2() -> None:
    # Stage tasks run beside busy actors: cv2's own thread pool would only oversubscribe the cores.
    import cv2

    cv2.setNumThreads(1)


# --- stage 2: forward (actor pool) ----------------------------------------------------------------

class InferActor:
    """Holds the model (loaded once per actor) and turns model inputs into uint8 probabilities."""

    def __init__(self, checkpoint: str, model_id: str, use_gpu: bool, threads: int, micro_batch: int,
                 s3: storage.S3Options, device: str | None = None) -> None:
        import torch

        from raysegment.model import reference
        from raysegment.model.checkpoint import load_model

        storage.set_default_s3_options(s3)  # load_model reads with the process-wide options
        torch.set_num_threads(threads)  # once, so forward_structures never has to switch
        # A GPU actor keeps the GPU recipe (micro-batches, bf16, channels_last) even on device "cpu".
        self.loaded = load_model(checkpoint, device or ("cuda" if use_gpu else "cpu"))
        if self.loaded.model_id != model_id and checkpoint == reference.NAME:
            # Each node resolves the name from its own installed package (model/reference.py).
            raise RuntimeError(f"this node's raysegment ships reference model {self.loaded.model_id}, the "
                               f"driver's {model_id}: install the same raysegment version on every node")
        if self.loaded.model_id != model_id:
            raise RuntimeError(f"checkpoint {checkpoint} changed during the run: weights "
                               f"{self.loaded.model_id}, expected {model_id}")
        if use_gpu:
            self.loaded.model.to(memory_format=torch.channels_last)
            if device == "cpu":  # say so: the GPU this actor holds sits idle
                import ray

                print(f"inference actor holds GPU(s) {ray.get_gpu_ids()} but runs the model on cpu "
                      "(--device cpu)", flush=True)
        self.size = self.loaded.spec.preprocess.size
        self.threads = threads
        self.micro_batch = micro_batch
        self.bf16 = use_gpu

    def _forward(self, images: np.ndarray) -> np.ndarray:
        from raysegment.model.forward import forward_structures

        return forward_structures(self.loaded.model, images, self.micro_batch, self.threads, self.bf16)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [r for r in rows if r["status"] == "ok"]
        if todo:
            t0 = time.perf_counter()
            images = np.stack([np.frombuffer(r["image"], np.uint8).reshape(self.size, self.size)
                               for r in todo])
            try:
                probs = list(self._forward(images))
            except Exception:  # noqa: BLE001 - find the culprit(s) one row at a time (same results by design)
                probs = []
                for i, row in enumerate(todo):
                    try:
                        probs.append(self._forward(images[i : i + 1])[0])
                    except Exception as e:  # noqa: BLE001 - per-row error row
                        _fail(row, "infer", e)
                        probs.append(None)
            per_row = _ms(t0) / len(todo)
            for row, prob in zip(todo, probs, strict=True):
                row["prob"] = None if prob is None else prob.tobytes()
                row["infer_ms"] = per_row
        for row in rows:
            del row["image"]
        return pa.Table.from_pylist(rows, schema=INFERRED_SCHEMA)


# --- stage 3: postprocess + encode + metrics (CPU tasks) ------------------------------------------

@dataclass(frozen=True)
class PostprocessJob:
    """What every postprocess task needs (small; shipped with each task)."""

    run_id: str
    model_id: str
    threshold: float
    preprocess: PreprocessConfig
    postprocess: PostprocessConfig
    masks_out: str | None
    s3: storage.S3Options
    counter: object = None  # progress.Counter actor: rows finished, for the driver's progress bar
    mask_png: bool = True
    dicom_seg_out: str | None = None
    dicom_seg_sides: bool = False
    calibration: Calibration | None = None  # quality_score; None: the checkpoint has no calibration.json
    structures: tuple[str, ...] = ("lungs",)  # the model's output channels (checkpoint spec.structures)


def _row_options(job: PostprocessJob) -> RowOptions:
    return RowOptions(job.run_id, job.model_id, job.threshold,
                      job.calibration.calibration_id if job.calibration else None, job.mask_png)


def _finish_row(row: dict, job: PostprocessJob) -> dict:
    """An INFERRED_SCHEMA row -> its results.SCHEMA row (outputs/rows.py), plus the files it asks for: the
    mask PNG under --masks-out, the DICOM SEG under --dicom-seg-out."""
    options = _row_options(job)
    if row["status"] != "ok":
        return base_row(row, options)
    t0 = time.perf_counter()
    size = job.preprocess.size
    try:
        prob = np.frombuffer(row["prob"], np.uint8).reshape(len(job.structures), size, size)
        truth_uris, other_truths = parse_truth(row.get("truth_uri") or "")
        others = {name: prob[c] for c, name in enumerate(job.structures) if c > 0}
        scored = score(prob[0], geometry(row["height"], row["width"], job.preprocess), job.threshold,
                       job.postprocess, truth_uris or None, row["image_uri"], spacing_of(row),
                       job.calibration, others, other_truths,
                       frontal=LATERAL_NOTE not in (row.get("qc_notes") or ()))
        out = result_row(row, scored, options)
        if job.masks_out:
            out["mask_uri"] = storage.join(job.masks_out, mask_key(row["key"]))
            storage.write_bytes(out["mask_uri"], out["mask_png"] or encode_mask_png(scored.segmentation.mask),
                                job.s3)
        if job.dicom_seg_out and row["image_format"] == "dicom":
            out["dicom_seg_uri"] = write_dicom_seg(row, scored.segmentation.mask, job,
                                                   {p.name: p.mask for p in scored.structures})
    except Exception as e:  # noqa: BLE001 - per-row error row
        out = base_row(row, options)
        _fail(out, "postprocess", e)
        return out
    out["postprocess_ms"] = _ms(t0)
    out["total_ms"] = sum(out.get(k) or 0.0 for k in ("read_ms", "decode_ms", "infer_ms", "postprocess_ms"))
    return out


def postprocess_batch(batch: pa.Table, job: PostprocessJob) -> pa.Table:
    """INFERRED_SCHEMA rows -> output rows (results.SCHEMA)."""
    _single_threaded_cv2()
    rows = [_finish_row(row, job) for row in batch.to_pylist()]
    if job.counter is not None:
        job.counter.add.remote(len(rows))  # fire and forget: progress only
    return pa.Table.from_pylist(rows, schema=SCHEMA)
