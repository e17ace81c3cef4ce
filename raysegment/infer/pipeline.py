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

import dataclasses
import datetime
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from raysegment import logs
from raysegment.cluster.plan import (
    InferPlan,
    connect,
)
from raysegment.data.datasets import discover
from raysegment.errors import InputError
from raysegment.infer import worklist
from raysegment.infer.config import InferConfig
from raysegment.infer.sizing import plan_run, todo_rows_per_file
from raysegment.infer.stages import (
    BLOCK_ROWS,
    CPU_BATCH,
    InferActor,
    PostprocessJob,
    decode_parts,
    postprocess_batch,
)
from raysegment.io import preflight, storage
from raysegment.io.inputs import Skipped
from raysegment.outputs.report import format_skipped
from raysegment.outputs.results import SCHEMA_VERSION, SummaryAccumulator, run_uri
from raysegment.postprocess.metrics import json_safe
from raysegment.postprocess.quality import Calibration, load_calibration
from raysegment.progress import Progress, poll, remote_counter

if TYPE_CHECKING:
    from raysegment.model.checkpoint import LoadedModel


def new_run_id() -> str:
    """Sortable and unique: 20250101T120000Z-1a2b3c."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _truth_index(uri: str) -> dict[str, str]:
    """image id (file stem) -> the ground truth's mask URIs (Pair.truth_string: lungs '|'-joined, then
    ';heart=...' etc. when the truth has further structures)."""
    return {p.image_id: p.truth_string() for p in discover(uri).pairs}


def build_dataset(todo_files: list[str], config: InferConfig, plan_: InferPlan, job: PostprocessJob,
                  batch_size: int):
    """The lazy Ray Dataset of output rows (results.SCHEMA) for the todo parts (worklist.TodoWriter)."""
    import ray

    from raysegment.model.forward import CPU_THREADS

    # Small CPU requests for the stage tasks: Ray Data gives each stage a share of the decode CPUs as its
    # budget, and a task larger than its stage's share never starts until the stages before it finish
    # (postprocess + write held every result back to the end of the run: nothing written until then).
    task_cpus = min(1.0, plan_.decode_cpus / 8)
    threads = (config.scaling.torch_threads
               or (max(1, int(plan_.cpus_per_actor)) if plan_.use_gpu else CPU_THREADS))
    # One row per todo part (its URI), one part per decode task: the task reads the part, keeps READ_AHEAD
    # image reads in flight while it decodes, and yields batches. (Not read_parquet: its file-listing task
    # takes a whole CPU that the actors may already hold, the 2-CPU hang.)
    ds = ray.data.from_items([{"part": uri} for uri in todo_files], override_num_blocks=len(todo_files))
    ds = ds.map_batches(decode_parts, batch_size=1, batch_format="pyarrow", num_cpus=task_cpus,
                        fn_kwargs={"preprocess": job.preprocess, "spacing_mm": config.io.pixel_spacing_mm,
                                   "s3": config.s3, "out_rows": max(batch_size, BLOCK_ROWS),
                                   "options": config.io.input_options()})
    ds = ds.map_batches(
        InferActor, batch_size=batch_size, batch_format="pyarrow",
        # min..max: Ray Data adds actors as nodes join (and the autoscaler adds nodes for pending ones).
        compute=ray.data.ActorPoolStrategy(min_size=plan_.num_actors, max_size=plan_.pool_max),
        num_cpus=plan_.cpus_per_actor, num_gpus=1 if plan_.use_gpu else 0,
        fn_constructor_kwargs={"checkpoint": config.model.checkpoint, "model_id": job.model_id,
                               "use_gpu": plan_.use_gpu,
                               "threads": threads, "micro_batch": batch_size if plan_.use_gpu else 1,
                               "s3": config.s3, "device": config.scaling.device},
        udf_modifying_row_count=False,
    )
    return ds.map_batches(postprocess_batch, batch_size=batch_size, batch_format="pyarrow",
                          num_cpus=task_cpus, fn_kwargs={"job": job},
                          udf_modifying_row_count=False), task_cpus


def _json(obj) -> str:
    return json.dumps(obj, indent=2, default=str, allow_nan=False) + "\n"


@dataclass(frozen=True)
class Prepared:
    """Step 1, before Ray starts: the request checked, the model loaded, the run named."""

    run_id: str
    loaded: LoadedModel
    calibration: Calibration | None
    threshold: float  # the --threshold, else the checkpoint's
    truth: dict[str, str]  # image id -> ground-truth mask URIs (empty without --ground-truth)
    wait_s: float  # seconds to wait for capacity (0: fail fast)
    out_uri: str  # OUTPUT/runs/<run_id>
    todo_uri: str  # OUTPUT/todo/<run_id>: the todo parts the decode tasks read

    @property
    def calibration_id(self) -> str | None:
        return self.calibration.calibration_id if self.calibration else None


@dataclass
class Work:
    """Step 2: every input and the earlier results in partitions (local scratch), and what is left to do."""

    listing: worklist.Partitioner
    earlier: worklist.Partitioner
    next_seq: int  # the sequence number the files of this run are indexed from
    n_inputs: int
    n_todo: int
    todo_files: list[str]  # the todo parts written (none in a dry run)
    list_s: float  # seconds to list and resume
    skipped: Skipped = dataclasses.field(default_factory=Skipped)  # what the listing passed over by name


def resolve_paths(config: InferConfig) -> InferConfig:
    """The run's local paths made absolute, ONCE, here in the driver (--input, --output, --masks-out,
    --ground-truth, --dicom-seg-out; s3:// as they are): every URI the run writes (image_uri, mask_uri,
    truth_uri, the result files) and compares (resume, this run's own files in the summary) then has one
    form whatever the working directory, and Ray workers (other working directories) write where the
    driver reads. image_uri was always absolute (the listing makes it so), so results of a run started
    with relative paths resume as they are. A --checkpoint that is a local folder is made absolute too (the
    actors load it); the name of the shipped model stays a name."""
    io, checkpoint = config.io, config.model.checkpoint

    def fix(uri: str | None) -> str | None:
        return storage.absolute(uri) if uri else uri

    if not storage.is_s3(checkpoint) and os.path.exists(checkpoint):
        checkpoint = storage.absolute(checkpoint)
    return dataclasses.replace(
        config, model=dataclasses.replace(config.model, checkpoint=checkpoint),
        io=dataclasses.replace(io, input=fix(io.input), output=fix(io.output), masks_out=fix(io.masks_out),
                               ground_truth=fix(io.ground_truth), dicom_seg_out=fix(io.dicom_seg_out)))


def prepare(config: InferConfig) -> Prepared:
    """Everything that can be wrong with the request fails here, in seconds, before Ray starts; then the
    model (and its calibration) is loaded and the run named."""
    from raysegment.model.checkpoint import load_model

    storage.set_default_s3_options(config.s3)
    io = config.io
    preflight.check_reachable(io.input, config.model.checkpoint, io.output, io.masks_out, io.ground_truth)
    preflight.require_exists(io.input, "--input")
    if io.ground_truth:
        preflight.require_exists(io.ground_truth, "--ground-truth")
    loaded = load_model(config.model.checkpoint)
    calibration = load_calibration(config.model.checkpoint, loaded.model_id)
    wait_s = config.cluster.wait_s()
    run_id = new_run_id()
    threshold = loaded.spec.threshold if config.model.threshold is None else config.model.threshold
    truth = _truth_index(io.ground_truth) if io.ground_truth else {}
    return Prepared(run_id, loaded, calibration, threshold, truth, wait_s, run_uri(io.output, run_id),
                    storage.join(io.output, "todo", run_id))


def list_and_resume(config: InferConfig, prep: Prepared, scratch: worklist.Scratch) -> Work:
    """The listing and the earlier results, into partitions; then resume, a partition at a time, into todo
    parts in the output (the workers read them). InputError when there are no inputs."""
    t_start = time.perf_counter()
    io = config.io
    listing = worklist.Partitioner(worklist.LISTING_SCHEMA, scratch.path("listing"))
    skipped = Skipped()
    for chunk in worklist.iter_listing(io.input, io.manifest_column, io.limit,
                                       exclude=(io.output, io.masks_out or "", io.dicom_seg_out or ""),
                                       s3=config.s3, truth=prep.truth, skipped=skipped):
        listing.add(chunk)
    listing.close()
    earlier = worklist.Partitioner(worklist.INDEX_SCHEMA, scratch.path("earlier"))
    next_seq = worklist.index_files(worklist.earlier_files(io.output), earlier)
    earlier.close()

    batch_guess = config.scaling.batch_size or CPU_BATCH
    writer = None if config.dry_run else worklist.TodoWriter(
        prep.todo_uri, todo_rows_per_file(listing.rows, batch_guess), config.s3)
    n_inputs = n_todo = 0
    model_id, calibration_id = prep.loaded.model_id, prep.calibration_id
    for p in range(listing.nparts):
        part = worklist.dedupe(listing.part(p))
        n_inputs += part.num_rows
        left = (worklist.todo(part, worklist.latest(earlier.part(p)), model_id, calibration_id, io.modalities)
                if io.resume else part)
        n_todo += left.num_rows
        if writer is not None and left.num_rows:
            writer.add(left)
    if writer is not None:
        writer.close()
    work = Work(listing, earlier, next_seq, n_inputs, n_todo, writer.files if writer is not None else [],
                time.perf_counter() - t_start, skipped)
    if n_inputs == 0:
        passed = f" ({format_skipped(skipped.as_dict(), skipped.examples).strip()})" if skipped.total else ""
        raise InputError(f"--input {io.input}: no files to read{passed}")
    by_name = f" ({skipped.total} files skipped by name)" if skipped.total else ""
    print(f"raysegment infer {prep.run_id}: {n_inputs} inputs{by_name}, {n_todo} to do, {n_inputs - n_todo} "
          f"done earlier (resume); model {model_id} ({work.list_s:.1f} s to list and resume)", flush=True)
    return work


def plan_step(config: InferConfig, prep: Prepared, work: Work) -> tuple[InferPlan | None, str, int]:
    """(plan, its description, batch size): Ray connected, waiting for capacity on a cluster that can
    grow. No plan when there is nothing to do (and this is no dry run). On failure the todo parts go."""
    from raysegment.model.forward import GPU_MICRO_BATCH

    try:
        connect(config.cluster.address)
        plan_, note = (plan_run(config.scaling, prep.wait_s, config.dry_run) if work.n_todo or config.dry_run
                       else (None, ""))
    except BaseException:
        storage.delete_dir(prep.todo_uri, config.s3)
        raise
    use_gpu = bool(plan_ and plan_.use_gpu)
    batch_size = config.scaling.batch_size or (GPU_MICRO_BATCH if use_gpu else CPU_BATCH)
    return plan_, plan_.describe() if plan_ else (note or "nothing to run"), batch_size


def dry_run_summary(config: InferConfig, prep: Prepared, work: Work, plan_text: str, batch_size: int) -> dict:
    """What a run would do (printed and returned; nothing is written)."""
    n_inputs, n_todo = work.n_inputs, work.n_todo
    print(f"dry run: would process {n_todo} of {n_inputs} inputs ({n_inputs - n_todo} done earlier); "
          f"plan: {plan_text}; batch {batch_size}; nothing was run", flush=True)
    return {"run_id": prep.run_id, "dry_run": True, "output": config.io.output,
            "model_id": prep.loaded.model_id,
            "inputs_seen": n_inputs, "to_process": n_todo, "skipped_resume": n_inputs - n_todo,
            "skipped": work.skipped.as_dict(), "skipped_by_name_examples": work.skipped.examples,
            "plan": plan_text, "batch_size": batch_size, "list_s": round(work.list_s, 3),
            "wait_for_capacity_s": prep.wait_s}


def postprocess_job(config: InferConfig, prep: Prepared, counter) -> PostprocessJob:
    """What every postprocess task needs, from the config and the loaded model."""
    io, spec = config.io, prep.loaded.spec
    return PostprocessJob(prep.run_id, prep.loaded.model_id, prep.threshold, spec.preprocess,
                          config.model.postprocess, io.masks_out, config.s3, counter, io.mask_png,
                          io.dicom_seg_out, io.dicom_seg_sides, prep.calibration, tuple(spec.structures))


def write_run_record(config: InferConfig, prep: Prepared, work: Work, plan_: InferPlan | None,
                     batch_size: int) -> None:
    """OUTPUT/runs/<run_id>/run.json: what the run was asked to do (the config, nested as InferConfig is),
    its plan, model and versions."""
    from raysegment.model.checkpoint import versions

    storage.write_text(storage.join(prep.out_uri, "run.json"), _json({
        "run_id": prep.run_id, "config": asdict(config), "model_id": prep.loaded.model_id,
        "threshold": prep.threshold, "plan": asdict(plan_) if plan_ else None, "batch_size": batch_size,
        "inputs": work.n_inputs, "todo": work.n_todo, "schema_version": SCHEMA_VERSION,
        "versions": versions(), "calibration_id": prep.calibration_id,
    }))


def execute(config: InferConfig, prep: Prepared, work: Work, plan_: InferPlan | None, batch_size: int,
            job: PostprocessJob) -> float:
    """Run the Ray Data pipeline over the todo parts into OUTPUT/runs/<run_id>/ with a progress bar; the
    todo parts are deleted in any case. Returns the wall seconds."""
    import ray

    t0 = time.perf_counter()
    try:
        if work.n_todo:
            ds, task_cpus = build_dataset(work.todo_files, config, plan_, job, batch_size)
            fs, path = storage.filesystem(prep.out_uri, config.s3)

            def rows_done() -> tuple[int, str]:
                return ray.get(job.counter.get.remote()), ""

            with Progress(work.n_todo, "infer", "images") as bar, poll(rows_done, bar):
                ds.write_parquet(path, filesystem=fs, min_rows_per_file=config.io.rows_per_file,
                                 ray_remote_args={"num_cpus": task_cpus})
    finally:
        storage.delete_dir(prep.todo_uri, config.s3)
    return time.perf_counter() - t0


def tally(config: InferConfig, prep: Prepared, work: Work, scratch: worklist.Scratch) -> dict:
    """Every input of this invocation as the output now stands (this run's rows and the earlier rows resume
    kept), a partition at a time; files written twice (retried tasks) resolved as read_results does and
    counted. Returns the summary's counts and metrics."""
    new = worklist.Partitioner(worklist.INDEX_SCHEMA, scratch.path("new"))
    worklist.index_files([f for f in worklist.earlier_files(config.io.output) if f.startswith(prep.out_uri)],
                         new, first_seq=work.next_seq)
    new.close()
    acc, missing, written, duplicates = SummaryAccumulator(), 0, 0, 0
    for p in range(work.listing.nparts):
        part = worklist.dedupe(work.listing.part(p))
        mine = new.part(p)
        written += mine.num_rows
        duplicates += mine.num_rows - len(pc.unique(mine.column("image_uri")))
        rows = worklist.latest(pa.concat_tables([work.earlier.part(p), mine]))
        rows = rows.filter(pc.is_in(rows.column("image_uri"), value_set=part.column("image_uri")))
        missing += part.num_rows - rows.num_rows  # inputs without any row: must be 0
        acc.add(rows)
    return {"rows_written": written, "missing": missing, "duplicates_resolved": duplicates, **acc.result()}


def run_inference(config: InferConfig) -> dict:
    """Run (or resume) bulk inference; returns the summary (also written as summary.json)."""
    config = resolve_paths(config)
    prep = prepare(config)
    with worklist.Scratch() as scratch:
        work = list_and_resume(config, prep, scratch)
        plan_, plan_text, batch_size = plan_step(config, prep, work)
        if config.dry_run:
            return dry_run_summary(config, prep, work, plan_text, batch_size)
        print(f"  plan: {plan_text}; batch {batch_size}; -> {prep.out_uri}", flush=True)
        logs.set_destination(prep.out_uri)
        job = postprocess_job(config, prep, remote_counter() if work.n_todo else None)
        if prep.calibration is None:
            print("  no calibration.json in the checkpoint: quality_score stays empty (run `raysegment "
                  "calibrate`)", flush=True)
        write_run_record(config, prep, work, plan_, batch_size)
        wall = execute(config, prep, work, plan_, batch_size, job)
        counts = tally(config, prep, work, scratch)
    n_inputs, n_todo = work.n_inputs, work.n_todo
    summary = json_safe({
        "run_id": prep.run_id, "output": config.io.output, "model_id": prep.loaded.model_id,
        "calibration_id": prep.calibration_id,
        "inputs_seen": n_inputs, "processed": n_todo, "rows_written": counts.pop("rows_written"),
        "skipped_resume": n_inputs - n_todo,
        # files the listing passed over by NAME (never rows), by reason; rows skipped by CONTENT are counted
        # in skipped_files / skipped_by_reason (SummaryAccumulator)
        "skipped": work.skipped.as_dict(), "skipped_by_name_examples": work.skipped.examples, **counts,
        "wall_s": round(wall, 3), "images_per_s": round(n_todo / wall, 3) if n_todo and wall > 0 else None,
        "plan": plan_text, "batch_size": batch_size,
    })
    storage.write_text(storage.join(prep.out_uri, "summary.json"), _json(summary))
    storage.write_text(storage.join(config.io.output, "summary.json"), _json(summary))
    return summary


def summary_header(s: dict) -> str:
    """The first line of a run's report (report.format_summary follows it)."""
    return (f"raysegment infer {s['run_id']}: {s['inputs_seen']} inputs, {s['skipped_resume']} done earlier "
            f"(resume); processed {s['processed']} in {s['wall_s']:.1f}s"
            + (f" ({s['images_per_s']:.2f} images/s)" if s["images_per_s"] else ""))
