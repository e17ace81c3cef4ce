"""Bulk inference on Ray Data: an X-ray archive (folder, s3:// prefix or manifest) -> masks and measurements
in Parquet, one row per input, resumable.

    todo parts (uri, identity, key, truth)           listing + resume, per partition: infer.worklist
      -> read + decode + preprocess      CPU tasks    -> uint8 SxS bytes   decode_batch
      -> forward                         actor pool   -> uint8 SxS prob    InferActor (model loaded once)
      -> postprocess + encode + metrics  CPU tasks    -> SCHEMA rows       postprocess_batch
      -> write_parquet(OUTPUT/runs/<run_id>/)

Between stages only compact bytes travel: the model input as uint8 SxS (64 KB at 256 px) and the
probability as uint8 SxS (x 255), never float arrays. Every stage catches errors per row: a failing row
gets status "error", the stage and the reason, skips the later stages and still reaches the output.

Resume: inputs whose latest ok row has the same model id, the same ground truth and unchanged identity
(size, mtime, ETag) are skipped; error rows are retried. Each run writes under its own prefix and
results.read_results dedupes.
Listing, resume and the summary go a partition at a time (worklist.py): no per-input state in the driver.

Capacity (cluster.capacity): on a cluster that can grow (joined with --address/$RAY_ADDRESS, or
--wait-for-capacity) the plan is an autoscaling actor pool (min..max actors) and the run waits, visibly and
for a bounded time, until the minimum fits; on a local Ray an impossible plan fails at once.

Sizing (cluster.plan_inference): one actor per GPU when there are GPUs (bf16 autocast, channels_last);
on CPU one single-threaded actor per CPU minus a decode share (max(0.5, CPUs/8)): the forward is ~95% of
the work, single-threaded actors use cores best, and a fixed thread count keeps results bit-identical
to predict.predict (see predict.py). Stage tasks ask for fractional CPUs that fit in the decode share,
so they can never be starved by the actors (the 2-CPU hang).
"""

from __future__ import annotations

import collections
import datetime
import itertools
import json
import logging
import math
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import raysegment
from raysegment import logs
from raysegment.cluster import capacity
from raysegment.cluster.plan import (
    ClusterResources,
    InferPlan,
    PlanError,
    cluster_resources,
    connect,
    plan_inference,
)
from raysegment.data.datasets import discover, parse_truth
from raysegment.data.preprocess import PreprocessConfig, geometry, preprocess_image
from raysegment.errors import InputError
from raysegment.evaluation.metrics import json_safe
from raysegment.evaluation.scoring import score
from raysegment.infer import worklist
from raysegment.infer.archive import prepare_image, write_dicom_seg
from raysegment.infer.postprocess import PostprocessConfig
from raysegment.infer.quality import Calibration, load_calibration
from raysegment.infer.results import SCHEMA, SCHEMA_VERSION, SummaryAccumulator, run_uri
from raysegment.infer.worklist import INPUT_SCHEMA
from raysegment.io import preflight, storage
from raysegment.io.decode import decode_image, encode_mask_png
from raysegment.io.inputs import mask_key
from raysegment.io.rle import encode_rle
from raysegment.progress import Progress, poll, remote_counter

log = logging.getLogger(__name__)

# torch is imported lazily (actor, driver): the CPU stage tasks never need it, and importing it costs each
# new worker process seconds and hundreds of MB.
CPU_BATCH = 8  # images per actor call on CPU: ~1 s of work, amortizes Ray overhead, short tail at the end


@dataclass(frozen=True)
class InferConfig:
    """Everything `raysegment infer` does; see `raysegment infer --help` for each option."""

    input: str  # folder, s3:// prefix, or .csv/.parquet manifest
    checkpoint: str  # checkpoint folder (local or s3://)
    output: str  # results folder or prefix
    masks_out: str | None = None  # also write each mask as PNG here
    ground_truth: str | None = None  # any layout datasets.discover finds
    manifest_column: str | None = None  # manifest column with the URIs (default: auto)
    limit: int | None = None  # only the first N inputs (trials)
    batch_size: int | None = None  # images per actor call (default CPU_BATCH on CPU, GPU_MICRO_BATCH on GPU)
    num_actors: int | None = None  # default: one per GPU, or one per CPU minus the decode share
    min_actors: int | None = None  # autoscaling pool: start with (and wait for) this many (default 1)
    max_actors: int | None = None  # ... and grow up to this many as nodes join (default: what can exist)
    # seconds to wait for nodes; None: 900 when joining a cluster, else 0
    wait_for_capacity: float | None = None
    no_wait: bool = False  # never wait: fail at once when the plan does not fit what is up
    dry_run: bool = False  # list, resume, plan and print; run nothing
    use_gpu: bool | None = None  # None: when the cluster has GPUs
    device: str | None = None  # where actors run the model: None = cuda on GPU actors; "cpu" forces the CPU
    torch_threads: int | None = None  # intra-op threads per CPU actor (default 1; see predict.py)
    threshold: float | None = None  # default: the checkpoint's
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    pixel_spacing_mm: float | None = None  # assumed spacing where the file has none (PNG/JPEG)
    resume: bool = True  # skip inputs already done ok with this model
    rows_per_file: int = 256  # at least this many rows per Parquet file (fewer for the last)
    s3: storage.S3Options = field(default_factory=storage.S3Options)
    address: str | None = None  # Ray cluster address (default: $RAY_ADDRESS or a local Ray)
    run_id: str | None = None  # default: UTC timestamp + random suffix
    correct_inversion: bool = True  # invert inverted PNG/JPEG/TIFF exports back (data/inversion.py)
    mask_png: bool = True  # False: leave the mask_png column empty (mask_rle holds the mask)
    dicom_seg_out: str | None = None  # write a DICOM SEG per DICOM input here (infer/dicom_seg.py)
    dicom_seg_sides: bool = False  # SEG with right and left lung as two segments instead of one "Lung"


def new_run_id() -> str:
    """Sortable and unique: 20250101T120000Z-1a2b3c."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


# --- stage schemas: what travels between stages ---------------------------------------------------

_STATUS_FIELDS = [("status", pa.string()), ("error_stage", pa.string()), ("error_type", pa.string()),
                  ("error", pa.string())]
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
    """Mark a row as failed at `stage` with a one-line, credential-free reason."""
    row["status"] = "error"
    row["error_stage"] = stage
    row["error_type"] = type(error).__name__
    row["error"] = storage.redact(" ".join(str(error).split()))[:1000] or type(error).__name__


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


# --- stage 1: read + decode + preprocess (CPU tasks) ----------------------------------------------

READ_AHEAD = 16  # concurrent object reads per decode task: hides per-request latency (40 ms on S3)
# Rows per block between stages (decode yields blocks this size; actor calls still take batch_size rows).
# Every block is an object the driver owns and tracks: 8-row blocks made driver memory grow with the archive.
BLOCK_ROWS = 64


def _read_row(row: dict, s3: storage.S3Options) -> tuple[bytes | None, BaseException | None, float]:
    t0 = time.perf_counter()
    try:
        return storage.get_object(row["image_uri"], s3), None, _ms(t0)
    except Exception as e:  # noqa: BLE001 - any per-row failure becomes an error row
        return None, e, _ms(t0)


def _decode_row(row: dict, read: tuple, preprocess: PreprocessConfig, spacing_mm: float | None,
                fix_inversion: bool = True) -> None:
    row.update(status="ok", image=None)
    data, error, read_ms = read
    if error is not None:
        return _fail(row, "read", error)
    row["read_ms"] = read_ms
    if row["input_size"] is None:  # manifests may not say; record what we read
        row["input_size"] = len(data)
    t0 = time.perf_counter()
    try:
        decoded = decode_image(data, storage.basename(row["image_uri"]))  # the name prefixes its errors
    except Exception as e:  # noqa: BLE001 - any per-row failure becomes an error row
        return _fail(row, "decode", e)
    meta = decoded.meta
    spacing = meta.pixel_spacing_mm or ((spacing_mm, spacing_mm) if spacing_mm else (None, None))
    row.update(image_format=meta.format, bit_depth=meta.bit_depth, height=meta.height, width=meta.width,
               pixel_spacing_row_mm=spacing[0], pixel_spacing_col_mm=spacing[1])
    try:
        model_input, _ = preprocess_image(prepare_image(decoded, fix_inversion, row), preprocess)
    except Exception as e:  # noqa: BLE001 - any per-row failure becomes an error row
        return _fail(row, "preprocess", e)
    row["image"] = model_input.tobytes()
    row["decode_ms"] = _ms(t0)


def decode_batch(batch: pa.Table, preprocess: PreprocessConfig, spacing_mm: float | None,
                 s3: storage.S3Options, out_rows: int = CPU_BATCH, fix_inversion: bool = True
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
            pending.append(pool.submit(_read_row, row, s3))
        for row in rows:
            read = pending.popleft().result()
            nxt = next(ahead, None)
            if nxt is not None:
                pending.append(pool.submit(_read_row, nxt, s3))
            _decode_row(row, read, preprocess, spacing_mm, fix_inversion)
            done.append(row)
            if len(done) >= out_rows:
                yield pa.Table.from_pylist(done, schema=DECODED_SCHEMA)
                done = []
    if done:
        yield pa.Table.from_pylist(done, schema=DECODED_SCHEMA)


def decode_parts(batch: pa.Table, preprocess: PreprocessConfig, spacing_mm: float | None,
                 s3: storage.S3Options, out_rows: int = CPU_BATCH, fix_inversion: bool = True
                 ) -> Iterator[pa.Table]:
    """Todo part URIs ("part" column) -> DECODED_SCHEMA tables of `out_rows` (see decode_batch)."""
    import pyarrow.parquet as pq

    for uri in batch.column("part").to_pylist():
        fs, path = storage.filesystem(uri, s3)
        with fs.open_input_file(path) as f:
            inputs = pq.read_table(f).select(INPUT_SCHEMA.names)
        yield from decode_batch(inputs, preprocess, spacing_mm, s3, out_rows, fix_inversion)


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

        from raysegment.model.checkpoint import load_model

        storage.set_default_s3_options(s3)  # load_model reads with the process-wide options
        torch.set_num_threads(threads)  # once, so forward_probabilities never has to switch
        # A GPU actor keeps the GPU recipe (micro-batches, bf16, channels_last) even on device "cpu".
        self.loaded = load_model(checkpoint, device or ("cuda" if use_gpu else "cpu"))
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
        from raysegment.infer.predict import forward_structures

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


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _structure_fields(scored, spacing: tuple[float, float] | None) -> dict:
    """The structures list and CTR columns of a multi-structure model's row; {} for a lungs-only model (its
    rows keep those columns null)."""
    if not scored.structures:
        return {}
    # scoring already turned a NaN dice into None
    cm2 = spacing[0] * spacing[1] / 100.0 if spacing else None
    parts = [{"name": p.name, "area_px": p.area_px, "area_cm2": p.area_px * cm2 if cm2 else None,
              "mask_rle": encode_rle(p.mask), "dice": (p.metrics or {}).get("dice")}
             for p in scored.structures]
    c = scored.ctr
    ctr = ({"ctr": c.ctr, "heart_width_px": c.heart_width_px, "thoracic_width_px": c.thoracic_width_px,
            "thoracic_row": c.thoracic_row} if c else {})
    return {"structures": parts, **ctr}


def _finish_row(row: dict, job: PostprocessJob) -> dict:
    out = {name: row.get(name) for name in SCHEMA.names if name in row}
    out.update(schema_version=SCHEMA_VERSION, run_id=job.run_id, model_id=job.model_id,
               package_version=raysegment.__version__,
               calibration_id=job.calibration.calibration_id if job.calibration else None)
    if row["status"] != "ok":
        return out
    t0 = time.perf_counter()
    size = job.preprocess.size
    spacing = (row["pixel_spacing_row_mm"], row["pixel_spacing_col_mm"])
    spacing = spacing if None not in spacing else None
    try:
        prob = np.frombuffer(row["prob"], np.uint8).reshape(len(job.structures), size, size)
        truth_uris, other_truths = parse_truth(row.get("truth_uri") or "")
        others = {name: prob[c] for c, name in enumerate(job.structures) if c > 0}
        scored = score(prob[0], geometry(row["height"], row["width"], job.preprocess), job.threshold,
                       job.postprocess, truth_uris or None, row["image_uri"], spacing, job.calibration,
                       others, other_truths)
        seg, flags = scored.segmentation, scored.qc_reasons
        notes = [*(row.get("qc_notes") or []), *scored.qc_notes]  # the decode stage's first (inversion, ...)
        png = encode_mask_png(seg.mask) if job.mask_png or job.masks_out else None
        measured = {
            "mask_png": png if job.mask_png else None, "mask_rle": encode_rle(seg.mask),
            "threshold": job.threshold, "lung_area_px": seg.area_px,
            "lung_fraction": seg.fraction, "right_lung_area_px": seg.right_area_px,
            "left_lung_area_px": seg.left_area_px,
            "lung_area_cm2": seg.area_px * spacing[0] * spacing[1] / 100.0 if spacing else None,
            "n_components": seg.n_components, "mean_confidence": _finite(seg.mean_confidence),
            "qc_flag": bool(flags), "qc_reasons": flags, "qc_notes": notes,
            "quality_score": scored.quality_score,
            **_structure_fields(scored, spacing),
        }
        if job.masks_out:
            measured["mask_uri"] = storage.join(job.masks_out, mask_key(row["key"]))
            storage.write_bytes(measured["mask_uri"], png, job.s3)
        if job.dicom_seg_out and row["image_format"] == "dicom":
            measured["dicom_seg_uri"] = write_dicom_seg(row, seg.mask, job,
                                                        {p.name: p.mask for p in scored.structures})
    except Exception as e:  # noqa: BLE001 - per-row error row
        _fail(out, "postprocess", e)
        return out
    out.update(measured)
    # A bad truth file is the ground truth's problem, not the prediction's: the row stays ok.
    out.update(scored.metrics or {}, truth_error=scored.truth_error)
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


# --- driver ---------------------------------------------------------------------------------------

def plan(config: InferConfig, resources: ClusterResources) -> InferPlan:
    """Actors and CPUs for this run on a cluster of fixed size (raises cluster.PlanError when it cannot be
    scheduled)."""
    use_gpu = resources.gpus >= 1 if config.use_gpu is None else config.use_gpu
    if config.device == "cuda" and not use_gpu:
        raise PlanError("--device cuda needs GPU actors: " + ("drop --no-gpu" if config.use_gpu is False else
                        f"the cluster has {resources.describe()}"))
    wanted = config.num_actors or config.max_actors
    if use_gpu:
        fixed = plan_inference(resources, wanted, use_gpu=True)
    else:
        decode_share = max(0.5, resources.cpus / 8)
        num_actors = wanted or max(1, int(resources.cpus - decode_share + 0.5))
        cpus_per_actor = max(resources.cpus - decode_share, 0.5) / num_actors
        if cpus_per_actor >= 1:
            cpus_per_actor = float(int(cpus_per_actor))
        fixed = plan_inference(resources, num_actors, use_gpu=False, cpus_per_actor=cpus_per_actor)
    if config.min_actors and config.min_actors < fixed.num_actors:  # a pool that may shrink to min_actors
        return replace(fixed, num_actors=config.min_actors, max_actors=fixed.num_actors)
    return fixed


def elastic_plan(config: InferConfig, resources: ClusterResources):
    """(make_plan, minimum bundles) for a cluster that can grow: an autoscaling pool of min..max actors.

    GPUs: the user's --gpu/--no-gpu, else whether the cluster can have GPUs (some up, or GPU node types in its
    autoscaling config), never a snapshot with no GPU node up yet. One GPU (+1 CPU) or one CPU per actor,
    so the autoscaler adds nodes of the right type. max: --max-actors, else as many as the cluster can grow
    to.
    """
    use_gpu = capacity.gpus_possible(resources) if config.use_gpu is None else config.use_gpu
    low = config.min_actors or config.num_actors or 1
    grow_to = capacity.max_resources()

    def make_plan(res: ClusterResources) -> InferPlan:
        if use_gpu:
            high = config.max_actors or config.num_actors or int(max(grow_to.get("GPU", 0), res.gpus))
            return replace(plan_inference(res, low, use_gpu=True), max_actors=max(low, high))
        cpus = max(grow_to.get("CPU", 0), res.cpus)
        high = config.max_actors or config.num_actors or int(cpus - max(0.5, cpus / 8))
        return replace(plan_inference(res, low, use_gpu=False, cpus_per_actor=1.0), max_actors=max(low, high))

    bundles = ([{"CPU": 1.0, "GPU": 1.0} if use_gpu else {"CPU": 1.0}] * low
               + [{"CPU": 1.0 if use_gpu else 0.5}])
    return make_plan, bundles


def _truth_index(uri: str) -> dict[str, str]:
    """image id (file stem) -> the ground truth's mask URIs (Pair.truth_string: lungs '|'-joined, then
    ';heart=...' etc. when the truth has further structures)."""
    return {p.image_id: p.truth_string() for p in discover(uri).pairs}


def build_dataset(todo_files: list[str], config: InferConfig, plan_: InferPlan, job: PostprocessJob,
                  batch_size: int):
    """The lazy Ray Dataset of output rows (results.SCHEMA) for the todo parts (worklist.TodoWriter)."""
    import ray

    from raysegment.infer.predict import CPU_THREADS

    # Small CPU requests for the stage tasks: Ray Data gives each stage a share of the decode CPUs as its
    # budget, and a task larger than its stage's share never starts until the stages before it finish
    # (postprocess + write held every result back to the end of the run: nothing written until then).
    task_cpus = min(1.0, plan_.decode_cpus / 8)
    threads = config.torch_threads or (max(1, int(plan_.cpus_per_actor)) if plan_.use_gpu else CPU_THREADS)
    # One row per todo part (its URI), one part per decode task: the task reads the part, keeps READ_AHEAD
    # image reads in flight while it decodes, and yields batches. (Not read_parquet: its file-listing task
    # takes a whole CPU that the actors may already hold, the 2-CPU hang.)
    ds = ray.data.from_items([{"part": uri} for uri in todo_files], override_num_blocks=len(todo_files))
    ds = ds.map_batches(decode_parts, batch_size=1, batch_format="pyarrow", num_cpus=task_cpus,
                        fn_kwargs={"preprocess": job.preprocess, "spacing_mm": config.pixel_spacing_mm,
                                   "s3": config.s3, "out_rows": max(batch_size, BLOCK_ROWS),
                                   "fix_inversion": config.correct_inversion})
    ds = ds.map_batches(
        InferActor, batch_size=batch_size, batch_format="pyarrow",
        # min..max: Ray Data adds actors as nodes join (and the autoscaler adds nodes for pending ones).
        compute=ray.data.ActorPoolStrategy(min_size=plan_.num_actors, max_size=plan_.pool_max),
        num_cpus=plan_.cpus_per_actor, num_gpus=1 if plan_.use_gpu else 0,
        fn_constructor_kwargs={"checkpoint": config.checkpoint, "model_id": job.model_id,
                               "use_gpu": plan_.use_gpu,
                               "threads": threads, "micro_batch": batch_size if plan_.use_gpu else 1,
                               "s3": config.s3, "device": config.device},
        udf_modifying_row_count=False,
    )
    return ds.map_batches(postprocess_batch, batch_size=batch_size, batch_format="pyarrow",
                          num_cpus=task_cpus, fn_kwargs={"job": job},
                          udf_modifying_row_count=False), task_cpus


def _json(obj) -> str:
    return json.dumps(obj, indent=2, default=str, allow_nan=False) + "\n"


def _plan_run(config: InferConfig, wait_s: float, dry_run: bool) -> tuple[InferPlan | None, str]:
    """(plan, note). Waits for capacity when wait_s > 0 (not in a dry run, which only says what it would
    wait for)."""
    resources = cluster_resources()
    if wait_s <= 0:
        return plan(config, resources), ""
    make_plan, bundles = elastic_plan(config, resources)
    if dry_run:
        try:
            return make_plan(resources), ""
        except PlanError:
            return None, (f"not up yet: a run would wait up to {wait_s:g} s "
                          f"for {capacity.describe_need(bundles)} "
                          f"({capacity.describe_up(bundles, resources)} now)")
    return capacity.wait_for_plan(make_plan, bundles, wait_s, what="the minimum of this plan"), ""


def _todo_rows_per_file(n_inputs: int, batch_size: int) -> int:
    """Rows per todo part (one decode task each): ~64 parts for a small run so every actor is fed from the
    start, >= 1 batch each, <= 256 (a part in flight is what a node loss costs; smaller parts finish, and
    reach the output, sooner)."""
    return int(min(256, max(batch_size, math.ceil(n_inputs / 64))))


def run_inference(config: InferConfig) -> dict:
    """Run (or resume) bulk inference; returns the summary (also written as summary.json)."""
    import ray

    from raysegment.infer.predict import GPU_MICRO_BATCH
    from raysegment.model.checkpoint import load_model, versions

    storage.set_default_s3_options(config.s3)
    # Everything that can be wrong with the request fails here, in seconds, before Ray starts.
    preflight.check_reachable(config.input, config.checkpoint, config.output, config.masks_out,
                              config.ground_truth)
    preflight.require_exists(config.input, "--input")
    if config.ground_truth:
        preflight.require_exists(config.ground_truth, "--ground-truth")
    loaded = load_model(config.checkpoint)
    calibration = load_calibration(config.checkpoint, loaded.model_id)
    calibration_id = calibration.calibration_id if calibration else None
    wait_s = capacity.wait_timeout(config.address, config.wait_for_capacity, config.no_wait)
    run_id = config.run_id or new_run_id()
    threshold = loaded.spec.threshold if config.threshold is None else config.threshold
    truth = _truth_index(config.ground_truth) if config.ground_truth else {}
    out_uri = run_uri(config.output, run_id)
    todo_uri = storage.join(config.output, "todo", run_id)
    t_start = time.perf_counter()
    with worklist.Scratch() as scratch:
        # 1. listing and earlier results, into partitions (local scratch, bounded memory)
        listing = worklist.Partitioner(worklist.LISTING_SCHEMA, scratch.path("listing"))
        for chunk in worklist.iter_listing(config.input, config.manifest_column, config.limit,
                                           exclude=(config.output, config.masks_out or "",
                                                    config.dicom_seg_out or ""), s3=config.s3,
                                           truth=truth):
            listing.add(chunk)
        listing.close()
        earlier = worklist.Partitioner(worklist.INDEX_SCHEMA, scratch.path("earlier"))
        next_seq = worklist.index_files(worklist.earlier_files(config.output), earlier)
        earlier.close()

        # 2. resume, a partition at a time -> todo parts in the output (workers read them)
        batch_guess = config.batch_size or CPU_BATCH
        writer = None if config.dry_run else worklist.TodoWriter(
            todo_uri, _todo_rows_per_file(listing.rows, batch_guess), config.s3)
        n_inputs = n_todo = 0
        for p in range(listing.nparts):
            part = worklist.dedupe(listing.part(p))
            n_inputs += part.num_rows
            left = (worklist.todo(part, worklist.latest(earlier.part(p)), loaded.model_id, calibration_id)
                    if config.resume else part)
            n_todo += left.num_rows
            if writer is not None and left.num_rows:
                writer.add(left)
        if writer is not None:
            writer.close()
        t_listed = time.perf_counter() - t_start
        if n_inputs == 0:
            raise InputError(f"--input {config.input}: no images found (PNG, JPEG, TIFF, DICOM)")
        print(f"raysegment infer {run_id}: {n_inputs} inputs, {n_todo} to do, {n_inputs - n_todo} done "
              f"earlier (resume); model {loaded.model_id} ({t_listed:.1f} s to list and resume)", flush=True)

        # 3. plan (waiting for capacity on a cluster that can grow)
        try:
            connect(config.address)
            plan_, note = (_plan_run(config, wait_s, config.dry_run) if n_todo or config.dry_run
                           else (None, ""))
        except BaseException:
            storage.delete_dir(todo_uri, config.s3)
            raise
        use_gpu = bool(plan_ and plan_.use_gpu)
        batch_size = config.batch_size or (GPU_MICRO_BATCH if use_gpu else CPU_BATCH)
        plan_text = plan_.describe() if plan_ else (note or "nothing to run")
        if config.dry_run:
            summary = {"run_id": run_id, "dry_run": True, "output": config.output,
                       "model_id": loaded.model_id,
                       "inputs_seen": n_inputs, "to_process": n_todo, "skipped_resume": n_inputs - n_todo,
                       "plan": plan_text, "batch_size": batch_size, "list_s": round(t_listed, 3),
                       "wait_for_capacity_s": wait_s}
            print(f"dry run: would process {n_todo} of {n_inputs} inputs ({n_inputs - n_todo} done earlier); "
                  f"plan: {plan_text}; batch {batch_size}; nothing was run", flush=True)
            return summary
        print(f"  plan: {plan_text}; batch {batch_size}; -> {out_uri}", flush=True)
        logs.set_destination(out_uri)
        counter = remote_counter() if n_todo else None
        job = PostprocessJob(run_id, loaded.model_id, threshold, loaded.spec.preprocess, config.postprocess,
                             config.masks_out, config.s3, counter, config.mask_png, config.dicom_seg_out,
                             config.dicom_seg_sides, calibration, tuple(loaded.spec.structures))
        if calibration is None:
            print("  no calibration.json in the checkpoint: quality_score stays empty (run `raysegment "
                  "calibrate`)", flush=True)
        storage.write_text(storage.join(out_uri, "run.json"), _json({
            "run_id": run_id, "config": asdict(config), "model_id": loaded.model_id, "threshold": threshold,
            "plan": asdict(plan_) if plan_ else None, "batch_size": batch_size, "inputs": n_inputs,
            "todo": n_todo, "schema_version": SCHEMA_VERSION, "versions": versions(),
            "calibration_id": calibration_id,
        }))

        # 4. run
        t0 = time.perf_counter()
        try:
            if n_todo:
                ds, task_cpus = build_dataset(writer.files, config, plan_, job, batch_size)
                fs, path = storage.filesystem(out_uri, config.s3)

                def rows_done() -> tuple[int, str]:
                    return ray.get(counter.get.remote()), ""

                with Progress(n_todo, "infer", "images") as bar, poll(rows_done, bar):
                    ds.write_parquet(path, filesystem=fs, min_rows_per_file=config.rows_per_file,
                                     ray_remote_args={"num_cpus": task_cpus})
        finally:
            storage.delete_dir(todo_uri, config.s3)
        wall = time.perf_counter() - t0

        # 5. summary of every input of this invocation as the output now stands (this run's rows and the
        # earlier rows resume kept), a partition at a time; files written twice (retried tasks) resolved
        # as read_results does and counted.
        new = worklist.Partitioner(worklist.INDEX_SCHEMA, scratch.path("new"))
        worklist.index_files([f for f in worklist.earlier_files(config.output) if f.startswith(out_uri)], new,
                             first_seq=next_seq)
        new.close()
        acc, missing, written, duplicates = SummaryAccumulator(), 0, 0, 0
        for p in range(listing.nparts):
            part = worklist.dedupe(listing.part(p))
            mine = new.part(p)
            written += mine.num_rows
            duplicates += mine.num_rows - len(pc.unique(mine.column("image_uri")))
            rows = worklist.latest(pa.concat_tables([earlier.part(p), mine]))
            rows = rows.filter(pc.is_in(rows.column("image_uri"), value_set=part.column("image_uri")))
            missing += part.num_rows - rows.num_rows  # inputs without any row: must be 0
            acc.add(rows)
    summary = {
        "run_id": run_id, "output": config.output, "model_id": loaded.model_id,
        "calibration_id": calibration_id,
        "inputs_seen": n_inputs, "processed": n_todo, "rows_written": written,
        "skipped_resume": n_inputs - n_todo, "missing": missing, "duplicates_resolved": duplicates,
        **acc.result(),
        "wall_s": round(wall, 3), "images_per_s": round(n_todo / wall, 3) if n_todo and wall > 0 else None,
        "plan": plan_text, "batch_size": batch_size,
    }
    summary = json_safe(summary)
    storage.write_text(storage.join(out_uri, "summary.json"), _json(summary))
    storage.write_text(storage.join(config.output, "summary.json"), _json(summary))
    return summary


def summary_header(s: dict) -> str:
    """The first line of a run's report (report.format_summary follows it)."""
    return (f"raysegment infer {s['run_id']}: {s['inputs_seen']} inputs, {s['skipped_resume']} skipped (done "
            f"earlier); processed {s['processed']} in {s['wall_s']:.1f}s"
            + (f" ({s['images_per_s']:.2f} images/s)" if s["images_per_s"] else ""))
