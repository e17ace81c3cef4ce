"""The training driver: plan, ingest, Ray Train `TorchTrainer`, run-directory outputs, test evaluation.

Run directory = the Ray Train run directory `{run.storage_path}/{run.name}/` (local or s3://):
    config.yaml            effective configuration (rewritten at each start)
    split_manifest.csv     image_id, split, image, mask (its sha256 is in every checkpoint's config.json)
    metrics.csv            one row per epoch (train_loop.COLUMNS); training_curves.png
    checkpoint_epoch_NNNN/ Ray Train checkpoints: model.safetensors + config.json + train_state.pt.
                           Ray keeps the best `run.checkpoints_to_keep` by val_dice AND always the latest.
    best/                  copy of the best checkpoint (model.safetensors + config.json): load_model(it)
                           + calibration.json: QC's quality_score fitted on the val split (run.calibrate)
    test_metrics.json      best/ on the test split, scored as `raysegment evaluate` does (scoring.py)
    raysegment.log         the full log of a `raysegment train` run (logs.py)
    checkpoint_manager_snapshot.json  Ray's bookkeeping: what makes a rerun with the same name resume

Resume: run again with the same run.name and storage_path; each worker gets the LATEST checkpoint from
`ray.train.get_checkpoint()` and restores weights, optimizer, scheduler, epoch and early-stopping state.
A worker death within a run restarts the worker group from that checkpoint (run.max_failures).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

from raysegment import logs
from raysegment.errors import ConfigError
from raysegment.io import preflight, storage
from raysegment.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from raysegment.postprocess.metrics import json_safe
from raysegment.progress import Progress, poll
from raysegment.train.config import TrainConfig, load_config, save_config


@dataclass
class TrainResult:
    run_dir: str
    best_dir: str
    history: list[dict]  # metrics.csv rows
    best_epoch: int
    test_metrics: dict | None
    # seconds: ray_init, ingest, first_step, fit, total
    timings: dict[str, float] = field(default_factory=dict)


def default_run_name() -> str:
    return time.strftime("train-%Y%m%d-%H%M%S")


def copy_checkpoint(src_uri: str, dest_uri: str) -> None:
    """Copy the inference part of a checkpoint (weights + config.json) between folders/URIs."""
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        storage.write_bytes(storage.join(dest_uri, name), storage.read_bytes(storage.join(src_uri, name)))



def evaluate_checkpoint(checkpoint_uri: str, run_dir: str, split: str = "test") -> dict:
    """The checkpoint on the run's `split`, scored as `raysegment evaluate` scores it (the one scoring path:
    post-processed at the original resolution). Returns evaluate's summary plus per-image rows
    ("per_image")."""
    from raysegment.evaluation.evaluate import evaluate, structure_columns

    result = evaluate(checkpoint_uri, storage.join(run_dir, "split_manifest.csv"), split)
    keep = ("image_id", "status", "error", "dice", "iou", "precision", "recall", "hd95", "hd95_mm", "tp",
            "fp", "fn", "qc_reasons", "truth_error")
    structures = result.summary.get("structures") or ["lungs"]
    keep += (*(["source"] if any(r.get("source") for r in result.rows) else []),
             *(structure_columns(structures) if len(structures) > 1 else []))
    return {**result.summary, "per_image": [{k: r.get(k) for k in keep} for r in result.flat_rows()]}


def calibrate_best(best_dir: str, run_dir: str) -> None:
    """best/calibration.json on the run's val split, as `raysegment calibrate` fits it (so `train` then
    `infer` has a quality_score); a val split too small to fit on is said in one line, never an error."""
    from raysegment.evaluation.calibrate import calibrate

    try:
        calibrate(best_dir, storage.join(run_dir, "split_manifest.csv"), progress=True)
    except ValueError as e:  # fewer than 2 labelled val images
        print(f"no QC calibration: {e}", flush=True)


def epoch_progress(run_dir: str) -> tuple[int, str]:
    """(last epoch, "loss .. val dice ..") from the run's metrics.csv, which rank 0 rewrites every epoch."""
    lines = storage.read_text(storage.join(run_dir, "metrics.csv")).splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in lines[1:]]
    if not rows:
        return 0, ""
    last = rows[-1]
    per = " ".join(f"{k[len('val_dice_'):]} {float(v):.3f}" for k, v in last.items()
                   if k.startswith("val_dice_"))
    return int(last["epoch"]), (f"loss {float(last['train_loss']):.4f}  val dice "
                                f"{float(last['val_dice']):.4f}{f' ({per})' if per else ''}  "
                                f"{float(last['epoch_time_s']):.0f}s/epoch")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_resumable(config: TrainConfig, previous_uri: str) -> None:
    """A rerun with an existing run.name resumes it: its checkpoints must fit this model and input."""
    if not storage.exists(previous_uri):
        return
    previous = load_config(previous_uri)
    for section in ("model", "preprocess", "structures"):
        if getattr(previous, section) != getattr(config, section):
            raise ConfigError(
                f"run.name: run {config.run.name!r} already exists with a different {section} section "
                f"({getattr(previous, section)} there); a rerun resumes it, so {section} must match. "
                f"Use a new run.name for a new model.")


def resolve_paths(config: TrainConfig) -> TrainConfig:
    """The run's local paths made absolute, ONCE, here in the driver (data.path, each data.sources path,
    run.storage_path, a local run.init_from; s3:// as they are): the workers run in other working
    directories, and config.yaml, the split manifest and the run dir then name the same files whatever
    the directory the command was started from."""
    overrides: dict = {"run.storage_path": storage.absolute(config.run.storage_path)}
    if config.data.path:
        overrides["data.path"] = storage.absolute(config.data.path)
    if config.data.sources:
        overrides["data.sources"] = [{**s, "path": storage.absolute(s["path"])}
                                     for s in config.to_dict()["data"]["sources"]]
    init = config.run.init_from
    if init and not storage.is_s3(init) and os.path.exists(init):
        overrides["run.init_from"] = storage.absolute(init)
    return config.replace(overrides)


def _preflight(config: TrainConfig) -> None:
    """Everything that can be wrong with the request fails here, in seconds, before Ray starts."""
    if not config.data.path and not config.data.sources:
        raise ConfigError("data.path: required (a dataset folder, s3:// prefix or manifest); pass --data "
                          "DIR, or list data.sources in the config")
    paths = [path for _, path, _ in config.source_list()]
    preflight.check_reachable(*paths, config.run.storage_path)
    for i, path in enumerate(paths):
        preflight.require_exists(path, f"data.sources[{i}].path" if config.data.sources else "data.path")
    if config.run.init_from:  # a start point that cannot be used fails now, not on the workers
        from raysegment.model.checkpoint import load_model
        from raysegment.model.finetune import check_compatible
        from raysegment.model.unet import UNet

        check_compatible(UNet.from_config(config.model), load_model(config.run.init_from))


def _plan_workers(config: TrainConfig):
    """(TrainPlan, torch threads per worker), checked before anything is submitted: an impossible plan
    fails now, naming what is missing; on a cluster that can grow it is waited for."""
    from raysegment.cluster import capacity
    from raysegment.cluster.plan import cluster_resources, plan_training

    s = config.scaling
    wait_s = config.cluster.wait_s()
    use_gpu = True if s.device == "cuda" and s.use_gpu is None else s.use_gpu
    if wait_s > 0 and use_gpu is None:  # from the cluster's config, not from which nodes happen to be up
        use_gpu = capacity.gpus_possible(cluster_resources())
    worker = {"CPU": s.cpus_per_worker or (1.0 if use_gpu else 0.5), **({"GPU": 1.0} if use_gpu else {})}
    plan = capacity.wait_for_plan(
        lambda res: plan_training(res, s.num_workers, use_gpu, s.cpus_per_worker, s.data_cpus),
        [worker] * s.num_workers + [{"CPU": 0.5}], wait_s, what=f"{s.num_workers} training worker(s)")
    return plan, s.torch_threads or max(1, int(plan.cpus_per_worker))


def _prepare_run_dir(config: TrainConfig, split, plan, run_dir: str) -> str:
    """Check the split fits the plan and the run dir (if any) can be resumed; write split_manifest.csv
    and config.yaml. Returns the split's digest."""
    from raysegment.data.datasets import write_manifest

    counts = split.counts()
    if counts["train"] < plan.num_workers or counts["val"] < 1:
        raise ConfigError(f"data.path: {counts} images per split; need >= {plan.num_workers} train "
                          f"(one per worker) and >= 1 val")
    _check_resumable(config, storage.join(run_dir, "config.yaml"))
    manifest_uri = storage.join(run_dir, "split_manifest.csv")
    if storage.exists(manifest_uri) and _sha256(storage.read_bytes(manifest_uri)) != split.digest():
        # Said here, not only by the workers: their output reaches the console with --verbose only.
        print("warning: the data split differs from the one this run was trained on so far (the data set "
              "changed since); resuming continues on the new split", flush=True)
    digest = write_manifest(split, manifest_uri)
    save_config(config, storage.join(run_dir, "config.yaml"))
    return digest


def _trainer(config: TrainConfig, plan, threads: int, run_dir: str, digest: str, ingest, fs, fs_path: str):
    """The Ray Train TorchTrainer of this run (train_loop_per_worker on plan.num_workers workers)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from raysegment.train.loop import train_loop_per_worker

    resources = {"CPU": plan.cpus_per_worker, **({"GPU": 1} if plan.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "run_dir": run_dir, "torch_threads": threads,
                           "split_digest": digest, "val_check": ingest.val_check, "use_gpu": plan.use_gpu},
        # GPU workers computing on the CPU (scaling.device=cpu) need gloo: NCCL only moves CUDA tensors.
        torch_config=TorchConfig(backend="gloo") if plan.use_gpu and config.scaling.device == "cpu" else None,
        scaling_config=ray.train.ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=config.run.name,
            storage_path=fs_path,
            storage_filesystem=fs if storage.is_s3(config.run.storage_path) else None,
            failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.run.checkpoints_to_keep, checkpoint_score_attribute="val_dice",
                checkpoint_score_order="max"),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets=ingest.datasets,
        # Val is not split (an equal split drops remainder rows): every worker reads it all, in order, and
        # evaluates every world_size-th batch. In order: without preserve_order Ray Data's collate threads
        # may reorder batches differently on each worker, and some images would count twice, others never.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"],
                                            execution_options=ingest.execution_options()),
    )


def _keep_best(result, run_dir: str, storage_uri: str) -> tuple[str, dict]:
    """Copy the best checkpoint to RUN_DIR/best; returns (best_dir, its config.json)."""
    best = result.get_best_checkpoint("val_dice", "max")
    if best is None:
        raise RuntimeError(f"training produced no checkpoint in {run_dir}")
    best_dir = storage.join(run_dir, "best")
    copy_checkpoint(storage.to_uri(best.path, storage_uri), best_dir)
    best_info = json.loads(storage.read_text(storage.join(best_dir, CONFIG_FILE)))
    print(f"best: epoch {best_info['epoch']}, val dice {best_info['metrics']['val_dice']:.4f} -> {best_dir}",
          flush=True)
    return best_dir, best_info


def train(config: TrainConfig) -> TrainResult:
    """Train per `config` on the connected (or started) Ray cluster; see the module docstring for outputs.

    On a cluster that can grow (joined with `cluster.address`/$RAY_ADDRESS, or `cluster.wait_for_capacity`
    seconds given) a plan that does not fit yet is waited for (cluster.capacity: bounded, visible;
    RetryableError at the end).
    """
    config = resolve_paths(config)
    _preflight(config)
    t_start = time.perf_counter()
    import ray.train  # noqa: F401 - imported first, as always: its seconds count in timings["ray_init_s"]

    from raysegment.cluster.plan import connect
    from raysegment.train.data import build_datasets, load_split

    if config.run.name is None:
        config = config.replace({"run.name": default_run_name()})
    split = load_split(config)
    connect(config.cluster.address)
    t_ray = time.perf_counter()
    plan, threads = _plan_workers(config)
    fs, fs_path = storage.filesystem(config.run.storage_path)
    storage_uri = storage.to_uri(fs_path, config.run.storage_path)  # absolute: workers have another cwd
    run_dir = storage.join(storage_uri, config.run.name)
    print(f"run {config.run.name}: {plan.describe()}, {threads} torch thread(s) per worker; "
          f"run dir {run_dir}",
          flush=True)
    logs.set_destination(run_dir)
    digest = _prepare_run_dir(config, split, plan, run_dir)

    ingest = build_datasets(split, config, run_dir, digest)  # materialized, or a Parquet cache streamed
    t_ingest = time.perf_counter()
    counts, decoded = split.counts(), ingest.rows
    per_source = "".join(f"\n  source {name}: {c['train']}/{c['val']}/{c['test']} train/val/test"
                         for name, c in split.source_counts().items())
    print(f"data: {split.discovery.layout} layout, {counts} images per split{per_source}\n  decoded train "
          f"{decoded['train']}/{counts['train']}, val {decoded['val']}/{counts['val']} "
          f"({t_ingest - t_ray:.1f} s); {ingest.describe()}", flush=True)

    trainer = _trainer(config, plan, threads, run_dir, digest, ingest, fs, fs_path)
    t_fit, wall_fit = time.perf_counter(), time.time()
    epochs = Progress(config.optim.epochs, "train", "epochs", every_s=0)
    with epochs, poll(lambda: epoch_progress(run_dir), epochs, interval_s=2.0):
        result = trainer.fit()
    t_done = time.perf_counter()
    out = result.return_value or {}
    best_dir, best_info = _keep_best(result, run_dir, storage_uri)

    if config.run.calibrate:  # before the test evaluation, so test_metrics.json reports QC as infer will
        calibrate_best(best_dir, run_dir)
    test_metrics = None
    if config.run.evaluate_test and split.pairs("test"):
        test_metrics = {"epoch": best_info["epoch"], **evaluate_checkpoint(best_dir, run_dir, "test")}
        storage.write_text(storage.join(run_dir, "test_metrics.json"),
                           json.dumps(json_safe(test_metrics), indent=2, allow_nan=False))
    timings = {"ray_init_s": t_ray - t_start, "ingest_s": t_ingest - t_ray, "fit_s": t_done - t_fit,
               "total_s": time.perf_counter() - t_start}
    if out.get("first_step_time"):
        timings["fit_to_first_step_s"] = out["first_step_time"] - wall_fit
    return TrainResult(run_dir, best_dir, out.get("history", []), int(best_info["epoch"]), test_metrics,
                       timings)
