"""Bulk inference on Ray Data: an X-ray archive (folder, s3:// prefix or manifest) -> masks and measurements
in Parquet, one row per input, resumable.

    inputs table (uri, identity, key, truth)                               driver: inputs.list_inputs
      -> read + decode + preprocess      CPU tasks    -> uint8 SxS bytes   decode_batch
      -> forward                         actor pool   -> uint8 SxS prob    InferActor (model loaded once)
      -> postprocess + encode + metrics  CPU tasks    -> SCHEMA rows       postprocess_batch
      -> write_parquet(OUTPUT/runs/<run_id>/)

Between stages only compact bytes travel: the model input as uint8 SxS (64 KB at 256 px) and the
probability as uint8 SxS (x 255), never float arrays. Every stage catches errors per row: a failing row
gets status "error", the stage and the reason, skips the later stages and still reaches the output.

Resume: inputs whose latest ok row has the same model id, the same ground truth and unchanged identity
(size, mtime, ETag) are skipped; error rows are retried. Each run writes under its own prefix and results.read_results dedupes.

Sizing (cluster.plan_inference): one actor per GPU when there are GPUs (bf16 autocast, channels_last);
on CPU one single-threaded actor per CPU minus a decode share (max(0.5, CPUs/8)): the forward is ~95% of
the work, single-threaded actors use cores best, and a fixed thread count keeps results bit-identical
to predict.predict (see predict.py). Stage tasks ask for fractional CPUs that fit in the decode share,
so they can never be starved by the actors (the 2-CPU hang).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import secrets
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import raysegment
from raysegment.cluster.plan import ClusterResources, InferPlan, cluster_resources, connect, plan_inference
from raysegment.data.datasets import discover, load_mask
from raysegment.data.preprocess import PreprocessConfig, geometry, preprocess_image
from raysegment.evaluation.metrics import image_metrics, json_safe
from raysegment.infer.postprocess import PostprocessConfig, postprocess, qc_reasons, split_reasons
from raysegment.infer.quality import Calibration, load_calibration
from raysegment.infer.results import (
    SCHEMA,
    SCHEMA_VERSION,
    SUMMARY_COLUMNS,
    done_inputs,
    is_done,
    read_results,
    run_uri,
    summarize_results,
)
from raysegment.io import storage
from raysegment.io.decode import decode_image, encode_mask_png
from raysegment.io.inputs import InputItem, list_inputs, mask_key

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
    use_gpu: bool | None = None  # None: when the cluster has GPUs
    torch_threads: int | None = None  # intra-op threads per CPU actor (default 1; see predict.py)
    threshold: float | None = None  # default: the checkpoint's
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    pixel_spacing_mm: float | None = None  # assumed spacing where the file has none (PNG/JPEG)
    resume: bool = True  # skip inputs already done ok with this model
    rows_per_file: int = 256  # at least this many rows per Parquet file (fewer for the last)
    s3: storage.S3Options = field(default_factory=storage.S3Options)
    address: str | None = None  # Ray cluster address (default: $RAY_ADDRESS or a local Ray)
    run_id: str | None = None  # default: UTC timestamp + random suffix


def new_run_id() -> str:
    """Sortable and unique: 20250101T120000Z-1a2b3c."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


# --- stage schemas: what travels between stages ---------------------------------------------------

INPUT_SCHEMA = pa.schema([
    ("image_uri", pa.string()), ("image_id", pa.string()), ("key", pa.string()), ("input_size", pa.int64()),
    ("input_mtime_ns", pa.int64()), ("input_etag", pa.string()), ("truth_uri", pa.string()),
])
_STATUS_FIELDS = [("status", pa.string()), ("error_stage", pa.string()), ("error_type", pa.string()),
                  ("error", pa.string())]
DECODED_SCHEMA = pa.schema([
    *INPUT_SCHEMA, *_STATUS_FIELDS, SCHEMA.field("image_format"), SCHEMA.field("bit_depth"),
    SCHEMA.field("height"), SCHEMA.field("width"), SCHEMA.field("pixel_spacing_row_mm"),
    SCHEMA.field("pixel_spacing_col_mm"), ("image", pa.binary()),  # uint8 SxS model input, row-major
    SCHEMA.field("read_ms"), SCHEMA.field("decode_ms"),
])
INFERRED_SCHEMA = pa.schema([
    *[f for f in DECODED_SCHEMA if f.name != "image"],
    ("prob", pa.binary()),  # uint8 SxS probability x 255, row-major
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

def _decode_row(row: dict, preprocess: PreprocessConfig, spacing_mm: float | None,
                s3: storage.S3Options) -> None:
    row.update(status="ok", image=None)
    t0 = time.perf_counter()
    try:
        data = storage.read_bytes(row["image_uri"], s3)
    except Exception as e:  # noqa: BLE001 - any per-row failure becomes an error row
        return _fail(row, "read", e)
    row["read_ms"] = _ms(t0)
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
        model_input, _ = preprocess_image(decoded.image, preprocess)
    except Exception as e:  # noqa: BLE001 - any per-row failure becomes an error row
        return _fail(row, "preprocess", e)
    row["image"] = model_input.tobytes()
    row["decode_ms"] = _ms(t0)


def decode_batch(batch: pa.Table, preprocess: PreprocessConfig, spacing_mm: float | None,
                 s3: storage.S3Options) -> pa.Table:
    """INPUT_SCHEMA rows -> DECODED_SCHEMA rows (image = uint8 SxS model input, or null on error)."""
    _single_threaded_cv2()
    rows = batch.to_pylist()
    for row in rows:
        _decode_row(row, preprocess, spacing_mm, s3)
    return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


def _single_threaded_cv2() -> None:
    # Stage tasks run beside busy actors: cv2's own thread pool would only oversubscribe the cores.
    import cv2

    cv2.setNumThreads(1)


# --- stage 2: forward (actor pool) ----------------------------------------------------------------

class InferActor:
    """Holds the model (loaded once per actor) and turns model inputs into uint8 probabilities."""

    def __init__(self, checkpoint: str, model_id: str, use_gpu: bool, threads: int, micro_batch: int,
                 s3: storage.S3Options) -> None:
        import torch

        from raysegment.model.checkpoint import load_model

        storage.set_default_s3_options(s3)  # load_model reads with the process-wide options
        torch.set_num_threads(threads)  # once, so forward_probabilities never has to switch
        self.loaded = load_model(checkpoint, "cuda" if use_gpu else "cpu")
        if self.loaded.model_id != model_id:
            raise RuntimeError(f"checkpoint {checkpoint} changed during the run: weights {self.loaded.model_id}, "
                               f"expected {model_id}")
        if use_gpu:
            self.loaded.model.to(memory_format=torch.channels_last)
        self.size = self.loaded.spec.preprocess.size
        self.threads = threads
        self.micro_batch = micro_batch

    def _forward(self, images: np.ndarray) -> np.ndarray:
        from raysegment.infer.predict import forward_probabilities

        return forward_probabilities(self.loaded.model, images, self.micro_batch, self.threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [r for r in rows if r["status"] == "ok"]
        if todo:
            t0 = time.perf_counter()
            images = np.stack([np.frombuffer(r["image"], np.uint8).reshape(self.size, self.size) for r in todo])
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
            for row, prob in zip(todo, probs):
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
    calibration: Calibration | None = None  # quality_score; None: the checkpoint has no calibration.json


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


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
        prob = np.frombuffer(row["prob"], np.uint8).reshape(size, size)
        seg = postprocess(prob, geometry(row["height"], row["width"], job.preprocess), job.threshold,
                          job.postprocess)
        quality = job.calibration.score(seg) if job.calibration else None
        flags, notes = split_reasons(qc_reasons(seg, job.postprocess, quality,
                                                job.calibration.threshold if job.calibration else None))
        measured = {
            "mask_png": encode_mask_png(seg.mask), "threshold": job.threshold, "lung_area_px": seg.area_px,
            "lung_fraction": seg.fraction, "right_lung_area_px": seg.right_area_px,
            "left_lung_area_px": seg.left_area_px,
            "lung_area_cm2": seg.area_px * spacing[0] * spacing[1] / 100.0 if spacing else None,
            "n_components": seg.n_components, "mean_confidence": _finite(seg.mean_confidence),
            "qc_flag": bool(flags), "qc_reasons": flags, "qc_notes": notes, "quality_score": quality,
        }
        if job.masks_out:
            measured["mask_uri"] = storage.join(job.masks_out, mask_key(row["key"]))
            storage.write_bytes(measured["mask_uri"], measured["mask_png"], job.s3)
    except Exception as e:  # noqa: BLE001 - per-row error row
        _fail(out, "postprocess", e)
        return out
    out.update(measured)
    if row.get("truth_uri"):
        # A bad truth file is the ground truth's problem, not the prediction's: the row stays ok.
        try:
            truth = load_mask(tuple(row["truth_uri"].split("|")), seg.mask.shape, row["image_uri"])
            scores = image_metrics(seg.mask, truth, spacing)
            out.update({k: _finite(v) if isinstance(v, float) else v for k, v in scores.items()})
        except Exception as e:  # noqa: BLE001 - recorded as truth_error
            out["truth_error"] = storage.redact(" ".join(str(e).split()))[:1000]
    out["postprocess_ms"] = _ms(t0)
    out["total_ms"] = sum(out.get(k) or 0.0 for k in ("read_ms", "decode_ms", "infer_ms", "postprocess_ms"))
    return out


def postprocess_batch(batch: pa.Table, job: PostprocessJob) -> pa.Table:
    """INFERRED_SCHEMA rows -> output rows (results.SCHEMA)."""
    _single_threaded_cv2()
    return pa.Table.from_pylist([_finish_row(row, job) for row in batch.to_pylist()], schema=SCHEMA)


# --- driver ---------------------------------------------------------------------------------------

def plan(config: InferConfig, resources: ClusterResources) -> InferPlan:
    """Actors and CPUs for this run (raises cluster.PlanError when it cannot be scheduled)."""
    use_gpu = resources.gpus >= 1 if config.use_gpu is None else config.use_gpu
    if use_gpu:
        return plan_inference(resources, config.num_actors, use_gpu=True)
    decode_share = max(0.5, resources.cpus / 8)
    num_actors = config.num_actors or max(1, int(resources.cpus - decode_share + 0.5))
    cpus_per_actor = max(resources.cpus - decode_share, 0.5) / num_actors
    if cpus_per_actor >= 1:
        cpus_per_actor = float(int(cpus_per_actor))
    return plan_inference(resources, num_actors, use_gpu=False, cpus_per_actor=cpus_per_actor)


def _truth_index(uri: str) -> dict[str, str]:
    """image id (file stem) -> '|'-joined mask URIs of the ground truth."""
    return {p.image_id: "|".join(p.mask_uris) for p in discover(uri).pairs}


def _inputs_table(items: list[InputItem], truth: dict[str, str]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"image_uri": i.uri, "image_id": i.image_id, "key": i.key, "input_size": i.size,
          "input_mtime_ns": i.mtime_ns, "input_etag": i.etag, "truth_uri": truth.get(i.image_id)} for i in items],
        schema=INPUT_SCHEMA,
    )


def build_dataset(inputs: pa.Table, config: InferConfig, plan_: InferPlan, job: PostprocessJob,
                  batch_size: int):
    """The lazy Ray Dataset of output rows (results.SCHEMA) for the inputs table."""
    import ray

    from raysegment.infer.predict import CPU_THREADS

    # Enough blocks to keep every actor fed from the start, few enough to keep per-block overhead low.
    rows_per_block = max(batch_size, min(512, math.ceil(inputs.num_rows / (plan_.num_actors * 4))))
    blocks = [inputs.slice(i, rows_per_block) for i in range(0, inputs.num_rows, rows_per_block)]
    task_cpus = min(1.0, plan_.decode_cpus / 2)  # two stage tasks fit in the decode share
    threads = config.torch_threads or (max(1, int(plan_.cpus_per_actor)) if plan_.use_gpu else CPU_THREADS)
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(decode_batch, batch_size=batch_size, batch_format="pyarrow", num_cpus=task_cpus,
                        fn_kwargs={"preprocess": job.preprocess, "spacing_mm": config.pixel_spacing_mm, "s3": config.s3},
                        udf_modifying_row_count=False)
    ds = ds.map_batches(
        InferActor, batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan_.num_actors),
        num_cpus=plan_.cpus_per_actor, num_gpus=1 if plan_.use_gpu else 0,
        fn_constructor_kwargs={"checkpoint": config.checkpoint, "model_id": job.model_id, "use_gpu": plan_.use_gpu,
                               "threads": threads, "micro_batch": batch_size if plan_.use_gpu else 1,
                               "s3": config.s3},
        udf_modifying_row_count=False,
    )
    return ds.map_batches(postprocess_batch, batch_size=batch_size, batch_format="pyarrow", num_cpus=task_cpus,
                          fn_kwargs={"job": job}, udf_modifying_row_count=False), task_cpus


def _json(obj) -> str:
    return json.dumps(obj, indent=2, default=str, allow_nan=False) + "\n"



def run_inference(config: InferConfig) -> dict:
    """Run (or resume) bulk inference; returns the summary (also written as summary.json)."""
    from raysegment.infer.predict import GPU_MICRO_BATCH
    from raysegment.model.checkpoint import load_model, versions

    storage.set_default_s3_options(config.s3)
    loaded = load_model(config.checkpoint)  # fail here, before any Ray work, on a bad checkpoint
    calibration = load_calibration(config.checkpoint, loaded.model_id)
    calibration_id = calibration.calibration_id if calibration else None
    connect(config.address)
    run_id = config.run_id or new_run_id()
    threshold = loaded.spec.threshold if config.threshold is None else config.threshold
    items = list_inputs(config.input, config.manifest_column, config.limit,
                        exclude=(config.output, config.masks_out or ""), s3=config.s3)
    truth = _truth_index(config.ground_truth) if config.ground_truth else {}
    done = done_inputs(config.output) if config.resume else {}
    todo = [i for i in items if not is_done(done.get(i.uri), loaded.model_id, i.size, i.mtime_ns, i.etag,
                                            truth.get(i.image_id), calibration_id)]
    plan_ = plan(config, cluster_resources())
    use_gpu = plan_.use_gpu
    batch_size = config.batch_size or (GPU_MICRO_BATCH if use_gpu else CPU_BATCH)
    out_uri = run_uri(config.output, run_id)
    print(f"raysegment infer {run_id}: {len(items)} inputs, {len(todo)} to do, {len(items) - len(todo)} done "
          f"earlier (resume); model {loaded.model_id}; {plan_.describe()}; batch {batch_size}; -> {out_uri}",
          flush=True)
    if calibration is None:
        print("  no calibration.json in the checkpoint: quality_score stays empty (run `raysegment calibrate`)",
              flush=True)
    job = PostprocessJob(run_id, loaded.model_id, threshold, loaded.spec.preprocess, config.postprocess,
                         config.masks_out, config.s3, calibration)
    storage.write_text(storage.join(out_uri, "run.json"), _json({
        "run_id": run_id, "config": asdict(config), "model_id": loaded.model_id, "threshold": threshold,
        "calibration_id": calibration_id,
        "plan": asdict(plan_), "batch_size": batch_size, "inputs": len(items), "todo": len(todo),
        "schema_version": SCHEMA_VERSION, "versions": versions(),
    }))

    t0 = time.perf_counter()
    if todo:
        ds, task_cpus = build_dataset(_inputs_table(todo, truth), config, plan_, job, batch_size)
        fs, path = storage.filesystem(out_uri, config.s3)
        ds.write_parquet(path, filesystem=fs, min_rows_per_file=config.rows_per_file,
                         ray_remote_args={"num_cpus": task_cpus})
    wall = time.perf_counter() - t0

    # The summary describes every input of this invocation as the output now stands (this run's rows
    # and the rows of earlier runs that resume kept), read back deduplicated, masks left out.
    table = read_results(config.output, columns=["image_uri", *SUMMARY_COLUMNS])
    table = table.filter(pc.is_in(table.column("image_uri"), value_set=pa.array([i.uri for i in items],
                                                                                 pa.string())))
    written = read_results(config.output, columns=["run_id"], all_rows=True)
    written_now = int(pc.sum(pc.equal(written.column("run_id"), run_id)).as_py() or 0) if written.num_rows else 0
    summary = {
        "run_id": run_id, "output": config.output, "model_id": loaded.model_id, "calibration_id": calibration_id,
        "inputs_seen": len(items), "processed": len(todo), "rows_written": written_now,
        "skipped_resume": len(items) - len(todo),
        "missing": len(items) - table.num_rows,  # inputs without any row: must be 0
        **summarize_results(table),
        "wall_s": round(wall, 3), "images_per_s": round(len(todo) / wall, 3) if todo and wall > 0 else None,
        "plan": plan_.describe(), "batch_size": batch_size,
    }
    summary = json_safe(summary)
    storage.write_text(storage.join(out_uri, "summary.json"), _json(summary))
    storage.write_text(storage.join(config.output, "summary.json"), _json(summary))
    print(format_summary(summary), flush=True)
    return summary


def format_summary(s: dict) -> str:
    """A few readable lines for the end of a run."""
    lines = [
        f"raysegment infer {s['run_id']}: {s['inputs_seen']} inputs: {s['ok']} ok, {s['errors']} errors, "
        f"{s['skipped_resume']} skipped (done earlier); processed {s['processed']} in {s['wall_s']:.1f}s"
        + (f" ({s['images_per_s']:.2f} images/s)" if s["images_per_s"] else ""),
    ]
    if s["errors_by_reason"]:
        lines.append("  errors: " + ", ".join(f"{k} x{v}" for k, v in s["errors_by_reason"].items()))
        lines += [f"    {e}" for e in s["error_examples"]]
    lines.append(f"  QC flagged: {s['qc_flagged']}" + (
        " (" + ", ".join(f"{k} x{v}" for k, v in s["qc_reasons"].items()) + ")" if s["qc_reasons"] else ""))
    if s.get("quality_scored"):
        q = s["quality_score"]
        lines.append(f"  quality_score (predicted dice): median {q['median']:.3f}, min {q['min']:.3f} over "
                     f"{s['quality_scored']} images; {s['quality_flagged']} below the threshold")
    if "metrics" in s:
        m = s["metrics"]
        parts = [f"{name} mean {m[name]['mean']:.4f} median {m[name]['median']:.4f}"
                 for name in ("dice", "iou", "hd95") if m[name]["n"]]
        lines.append(f"  vs ground truth ({m['n_scored']} images): " + "; ".join(parts))
    if s["missing"]:
        lines.append(f"  WARNING: {s['missing']} inputs have no row; run the same command again to resume")
    lines.append(f"  results: {s['output']}")
    return "\n".join(lines)
