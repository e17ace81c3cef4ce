"""The training driver: plan, ingest, Ray Train `TorchTrainer`, run-directory outputs, test evaluation.

Run directory = the Ray Train run directory `{run.storage_path}/{run.name}/` (local or s3://):
    config.yaml            effective configuration (rewritten at each start)
    split_manifest.csv     image_id, split, image, mask (its sha256 is in every checkpoint's config.json)
    metrics.csv            one row per epoch (train_loop.COLUMNS); training_curves.png
    checkpoint_epoch_NNNN/ Ray Train checkpoints: model.safetensors + config.json + train_state.pt.
                           Ray keeps the best `run.checkpoints_to_keep` by val_dice AND always the latest.
    best/                  copy of the best checkpoint (model.safetensors + config.json): load_model(it)
    test_metrics.json      the best checkpoint on the test split (per image and means)
    checkpoint_manager_snapshot.json  Ray's bookkeeping: what makes a rerun with the same name resume

Resume: run again with the same run.name and storage_path; each worker gets the LATEST checkpoint from
`ray.train.get_checkpoint()` and restores weights, optimizer, scheduler, epoch and early-stopping state.
A worker death within a run restarts the worker group from that checkpoint (run.max_failures).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from raysegment.evaluation.metrics import json_safe
from raysegment.io import storage
from raysegment.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from raysegment.train.config import ConfigError, TrainConfig, load_config, save_config


@dataclass
class TrainResult:
    run_dir: str
    best_dir: str
    history: list[dict]  # metrics.csv rows
    best_epoch: int
    test_metrics: dict | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds: ray_init, ingest, first_step, fit, total


def default_run_name() -> str:
    return time.strftime("train-%Y%m%d-%H%M%S")


def copy_checkpoint(src_uri: str, dest_uri: str) -> None:
    """Copy the inference part of a checkpoint (weights + config.json) between folders/URIs."""
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        storage.write_bytes(storage.join(dest_uri, name), storage.read_bytes(storage.join(src_uri, name)))



def evaluate_checkpoint(checkpoint_uri: str, pairs, batch_size: int = 8) -> dict:
    """Evaluate a checkpoint (no Ray) on labelled pairs at model resolution.

    Returns {"n", "means" (MetricSums.means: macro means + micro_dice), "images": [per-image metrics]}.
    """
    import torch

    from raysegment.data.preprocess import to_tensor
    from raysegment.evaluation.metrics import MetricSums, image_metrics
    from raysegment.model.checkpoint import load_model
    from raysegment.train.data import prepare_pair
    from raysegment.train.loop import predict_masks

    loaded = load_model(checkpoint_uri)
    sums, per_image = MetricSums(), []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        prepared = [prepare_pair(p, loaded.spec.preprocess) for p in chunk]
        images = np.stack([image for image, _ in prepared])
        with torch.no_grad():
            pred = predict_masks(loaded.model(to_tensor(images)), loaded.spec.threshold)[:, 0].numpy()
        for pair, (_, mask), p in zip(chunk, prepared, pred):
            m = image_metrics(p, mask.astype(bool))
            sums.add(m)
            per_image.append({"image_id": pair.image_id, **m})
    return {"checkpoint": checkpoint_uri, "model_id": loaded.model_id, "n": len(per_image),
            "means": sums.means(), "images": per_image}


def _check_resumable(config: TrainConfig, previous_uri: str) -> None:
    """A rerun with an existing run.name resumes it: its checkpoints must fit this model and input."""
    if not storage.exists(previous_uri):
        return
    previous = load_config(previous_uri)
    for section in ("model", "preprocess"):
        if getattr(previous, section) != getattr(config, section):
            raise ConfigError(
                f"run.name: run {config.run.name!r} already exists with a different {section} section "
                f"({getattr(previous, section)} there); a rerun resumes it, so {section} must match. "
                f"Use a new run.name for a new model.")


def train(config: TrainConfig, address: str | None = None) -> TrainResult:
    """Train per `config` on the connected (or started) Ray cluster; see the module docstring for outputs."""
    if not config.data.path:
        raise ConfigError("data.path: required (a dataset folder, s3:// prefix or manifest); pass --data DIR")
    t_start = time.perf_counter()
    import ray.train
    from ray.train.torch import TorchTrainer

    from raysegment.cluster.plan import cluster_resources, connect, plan_training
    from raysegment.data.datasets import load_split_dataset, write_manifest
    from raysegment.train.data import build_datasets
    from raysegment.train.loop import train_loop_per_worker

    if config.run.name is None:
        config = config.replace({"run.name": default_run_name()})
    connect(address)
    t_ray = time.perf_counter()
    s = config.scaling
    # Checked before anything is submitted: an impossible plan fails now, naming what is missing.
    plan = plan_training(cluster_resources(), s.num_workers, s.use_gpu, s.cpus_per_worker, s.data_cpus)
    threads = s.torch_threads or max(1, int(plan.cpus_per_worker))
    fs, fs_path = storage.filesystem(config.run.storage_path)
    storage_uri = storage.to_uri(fs_path, config.run.storage_path)  # absolute: workers have another cwd
    run_dir = storage.join(storage_uri, config.run.name)
    print(f"run {config.run.name}: {plan.describe()}, {threads} torch thread(s) per worker; run dir {run_dir}",
          flush=True)

    split = load_split_dataset(config.data.path, tuple(config.data.split), config.data.split_seed)
    counts = split.counts()
    if counts["train"] < plan.num_workers or counts["val"] < 1:
        raise ConfigError(f"data.path: {counts} images per split; need >= {plan.num_workers} train "
                          f"(one per worker) and >= 1 val")
    _check_resumable(config, storage.join(run_dir, "config.yaml"))
    digest = write_manifest(split, storage.join(run_dir, "split_manifest.csv"))
    save_config(config, storage.join(run_dir, "config.yaml"))

    ingest = build_datasets(split, config, run_dir, digest)  # materialized, or a Parquet cache streamed
    datasets, decoded = ingest.datasets, ingest.rows
    t_ingest = time.perf_counter()
    print(f"data: {split.discovery.layout} layout, {counts} images per split; decoded train "
          f"{decoded['train']}/{counts['train']}, val {decoded['val']}/{counts['val']} "
          f"({t_ingest - t_ray:.1f} s); {ingest.describe()}", flush=True)

    resources = {"CPU": plan.cpus_per_worker, **({"GPU": 1} if plan.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "run_dir": run_dir, "torch_threads": threads,
                           "split_digest": digest, "val_check": ingest.val_check},
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
        datasets=datasets,
        # Val is not split (an equal split drops remainder rows): every worker reads it all, in order, and
        # evaluates every world_size-th batch. In order: without preserve_order Ray Data's collate threads
        # may reorder batches differently on each worker, and some images would count twice, others never.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=ingest.execution_options()),
    )
    t_fit, wall_fit = time.perf_counter(), time.time()
    result = trainer.fit()
    t_done = time.perf_counter()
    out = result.return_value or {}

    best = result.get_best_checkpoint("val_dice", "max")
    if best is None:
        raise RuntimeError(f"training produced no checkpoint in {run_dir}")
    best_dir = storage.join(run_dir, "best")
    copy_checkpoint(storage.to_uri(best.path, storage_uri), best_dir)
    best_info = json.loads(storage.read_text(storage.join(best_dir, CONFIG_FILE)))
    print(f"best: epoch {best_info['epoch']}, val dice {best_info['metrics']['val_dice']:.4f} -> {best_dir}",
          flush=True)

    test_metrics = None
    if config.run.evaluate_test and split.pairs("test"):
        test_metrics = evaluate_checkpoint(best_dir, split.pairs("test"))
        test_metrics["epoch"] = best_info["epoch"]
        storage.write_text(storage.join(run_dir, "test_metrics.json"),
                           json.dumps(json_safe(test_metrics), indent=2, allow_nan=False))
        means = test_metrics["means"]
        print(f"test ({test_metrics['n']} images): dice {means['dice']:.4f}  iou {means['iou']:.4f}  "
              f"hd95 {means.get('hd95', float('nan')):.2f} px -> {storage.join(run_dir, 'test_metrics.json')}",
              flush=True)
    timings = {"ray_init_s": t_ray - t_start, "ingest_s": t_ingest - t_ray, "fit_s": t_done - t_fit,
               "total_s": time.perf_counter() - t_start}
    if out.get("first_step_time"):
        timings["fit_to_first_step_s"] = out["first_step_time"] - wall_fit
    return TrainResult(run_dir, best_dir, out.get("history", []), int(best_info["epoch"]), test_metrics, timings)
