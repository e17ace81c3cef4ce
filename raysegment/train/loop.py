"""The per-worker training loop that Ray Train runs in each worker (`train_loop_per_worker`).

Per epoch: train on this worker's shard (DDP averages gradients), validate on the WHOLE val set (each
worker takes every world_size-th batch; sums are all-reduced once, so uneven shares never desynchronize
the collectives), step ReduceLROnPlateau on val loss, report metrics and a checkpoint, and on rank 0
rewrite metrics.csv / training_curves.png and print one progress line.

A checkpoint folder is what `raysegment.model.checkpoint.save_checkpoint` writes (model.safetensors +
config.json, loadable without Ray) plus `train_state.pt` (optimizer, scheduler, TrainState) for resuming.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from raysegment.io import storage
from raysegment.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, ModelSpec, save_checkpoint
from raysegment.model.unet import UNet
from raysegment.postprocess.metrics import METRICS, scores_from_counts
from raysegment.train.config import TrainConfig
from raysegment.train.data import EvalCollate, TrainCollate
from raysegment.train.losses import loss_function

STATE_FILE = "train_state.pt"
KILL_MARKER = "debug_worker_killed"  # in the run dir: the injected fault happens once
COLUMNS = ("epoch", "train_loss", "train_dice", "val_loss", "val_dice", "val_iou", "val_precision",
           "val_recall", "lr", "images_per_s", "epoch_time_s", "cpu_ms_per_image")


@dataclass
class TrainState:
    """Everything beyond weights/optimizer/scheduler that a resumed run needs."""

    epoch: int = 0  # last completed epoch
    best_dice: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best val dice (early stopping)
    history: list[dict] = field(default_factory=list)  # one COLUMNS row per epoch
    starts: list[int] = field(default_factory=list)  # epoch at which each (re)start began


def predict_masks(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Logits (N, C, H, W) -> bool masks (N, C, H, W): sigmoid probability > threshold."""
    return torch.sigmoid(logits.float()) > threshold


def confusion_counts(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per image and structure (tp, fp, fn) of bool (N, C, H, W) masks -> int64 (N, C, 3), on their device."""
    truth = truth.bool()
    tp = (pred & truth).flatten(2).sum(2)
    return torch.stack([tp, pred.flatten(2).sum(2) - tp, truth.flatten(2).sum(2) - tp], dim=2)


def _score_sums(counts: torch.Tensor, labelled: torch.Tensor | None = None) -> list[float]:
    """Per structure: [labelled images, sum over them of each of METRICS], from (N, C, 3) counts
    (metrics.scores_from_counts does the math). Returns C * (1 + len(METRICS)) numbers, structure-major."""
    c = counts.cpu().numpy()
    keep = np.ones(c.shape[:2], bool) if labelled is None else labelled.cpu().numpy().astype(bool)
    out = []
    for ch in range(c.shape[1]):
        rows = c[keep[:, ch], ch]
        scores = scores_from_counts(rows[:, 0], rows[:, 1], rows[:, 2])
        out += [float(len(rows)), *(float(np.sum(scores[m])) for m in METRICS)]
    return out


def structure_means(sums: list[float], structures: tuple[str, ...]) -> dict[str, float]:
    """_score_sums (summed over workers) -> val_<metric> (mean over structures of each structure's mean over
    its labelled images; for lungs alone the mean over images) and, with several structures,
    val_dice_<name>."""
    width = 1 + len(METRICS)
    per = {name: [v / max(sums[i * width], 1) for v in sums[i * width + 1 : (i + 1) * width]]
           for i, name in enumerate(structures)}
    out = {f"val_{m}": float(np.mean([per[s][j] for s in structures])) for j, m in enumerate(METRICS)}
    if len(structures) > 1:
        out.update({f"val_dice_{s}": per[s][METRICS.index("dice")] for s in structures})
    return out


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a short list of numbers over all workers (one collective call)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def _autocast(device: torch.device, bf16: bool):
    # bf16 on GPU workers (no loss scaling needed), also when scaling.device=cpu runs them on the CPU (CPU
    # autocast supports bf16: the GPU recipe stays testable without a GPU); fp32 on CPU workers, where
    # bf16 convs are slower and less exact.
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def train_epoch(model, shard, optimizer, loss_fn, config: TrainConfig, epoch: int, device: torch.device,
                bf16: bool = False):
    """One pass over this worker's shard.

    Returns global (mean loss, mean dice, images, process CPU seconds summed over workers) and this
    worker's (seconds, wall time of its first step). CPU time, unlike wall time, does not depend on what
    else runs on the machine: it measures the cost of an image.
    """
    model.train()
    collate = TrainCollate(config.augment, config.run.seed, epoch)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    counts, flags = [], []
    start, cpu_start, first_step_at = time.perf_counter(), time.process_time(), None
    batches = shard.iter_torch_batches(
        batch_size=config.optim.batch_size, collate_fn=collate, prefetch_batches=config.run.prefetch_batches,
        local_shuffle_buffer_size=max(64, 8 * config.optim.batch_size),
        local_shuffle_seed=config.run.seed * 100_003 + epoch, device=device,
    )
    for x, y, labelled in batches:
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, bf16):
            logits = model(x)
        loss = loss_fn(logits, y, labelled)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        first_step_at = first_step_at or time.time()
        loss_sum += loss.detach().double() * len(x)
        counts.append(confusion_counts(predict_masks(logits.detach(), config.threshold), y))
        flags.append(labelled.cpu())
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    channels = len(config.structures)
    local = torch.cat(counts) if counts else torch.zeros((0, channels, 3), dtype=torch.int64)
    local_flags = torch.cat(flags) if flags else torch.zeros((0, channels), dtype=torch.bool)
    sums = _score_sums(local, local_flags)  # train dice: over every labelled (image, structure)
    width, dice_at = 1 + len(METRICS), 1 + METRICS.index("dice")
    entries = sum(sums[i * width] for i in range(channels))
    dice_sum = sum(sums[i * width + dice_at] for i in range(channels))
    n, loss_total, entries, dice_total, cpu_total = _all_reduce_sum(
        [len(local), loss_sum.item(), entries, dice_sum, cpu_seconds], device)
    return loss_total / max(n, 1), dice_total / max(entries, 1), int(n), cpu_total, seconds, first_step_at


@torch.no_grad()
def validate(model, shard, loss_fn, config: TrainConfig, device: torch.device, rank: int, world: int,
             expected: tuple[int, int], bf16: bool = False) -> dict:
    """Loss and METRICS (means over images) on the whole val set, identical on every worker.

    Every worker iterates the (unsplit, ordered) val set and evaluates batches i with i % world == rank.
    `expected` = (images, key checksum) of the val set: a pass that missed or repeated an image fails loudly.
    """
    net = getattr(model, "module", model)  # plain module: DDP's forward would add collectives
    if world > 1:
        # BatchNorm running stats drift apart per worker; evaluate all with rank 0's, the ones it saves.
        for buffer in net.buffers():
            dist.broadcast(buffer, src=0)
    net.eval()
    structures = tuple(config.structures)
    loss_sum, sums, n, checksum = 0.0, [0.0] * (len(structures) * (1 + len(METRICS))), 0, 0
    batches = shard.iter_torch_batches(batch_size=config.optim.batch_size, collate_fn=EvalCollate(),
                                       prefetch_batches=config.run.prefetch_batches, device=device)
    for i, (x, y, labelled, keys) in enumerate(batches):
        if i % world != rank:
            continue
        checksum += int(keys.sum())
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, bf16):
            logits = net(x)
        loss_sum += float(loss_fn(logits, y, labelled)) * len(x)
        batch_sums = _score_sums(confusion_counts(predict_masks(logits, config.threshold), y), labelled)
        sums = [a + b for a, b in zip(sums, batch_sums, strict=True)]
        n += len(x)
    total = _all_reduce_sum([n, checksum, loss_sum, *sums], device)
    if (int(total[0]), int(total[1])) != expected:
        raise RuntimeError(f"validation covered {int(total[0])} images (key checksum {int(total[1])}), "
                           f"expected {expected[0]} ({expected[1]}): the val batches were not in the same "
                           f"order on all workers")
    return {"val_loss": total[2] / max(total[0], 1), **structure_means(total[3:], structures)}


def _save(folder: str, model, optimizer, scheduler, state: TrainState, config: TrainConfig,
          extra: dict) -> None:
    spec = ModelSpec(config.model, config.preprocess, config.threshold, tuple(config.structures))
    save_checkpoint(folder, model, spec, extra)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "state": dataclasses.asdict(state)}, os.path.join(folder, STATE_FILE))


def _restore(checkpoint, model: torch.nn.Module) -> tuple[dict, dict]:
    """Load weights into `model` (unwrapped); return (train_state.pt dict, config.json dict)."""
    from safetensors.torch import load_file

    with checkpoint.as_directory() as folder:
        model.load_state_dict(load_file(os.path.join(folder, WEIGHTS_FILE)))
        saved = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
        with open(os.path.join(folder, CONFIG_FILE)) as f:
            info = json.load(f)
    return saved, info


def _maybe_kill(config: TrainConfig, run_dir: str, epoch: int, rank: int, world: int) -> None:
    """Fault injection for tests: one worker dies at the start of debug.kill_worker_at_epoch, once.

    It first waits until the controller has committed the previous epoch's checkpoint, so the restart
    point is deterministic (epoch - 1). A real crash can also lose the epoch whose report is in flight.
    """
    if config.debug.kill_worker_at_epoch != epoch or rank != min(1, world - 1):
        return
    marker = storage.join(run_dir, KILL_MARKER)
    if storage.exists(marker):
        return
    import ray.train

    ray.train.get_all_reported_checkpoints(ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120)
    storage.write_text(marker, f"rank {rank} exited at the start of epoch {epoch}\n")
    say(f"debug: rank {rank} exits at the start of epoch {epoch} (debug.kill_worker_at_epoch)")
    os._exit(1)


def write_run_outputs(run_dir: str, history: list[dict]) -> None:
    """metrics.csv and training_curves.png in the run dir (local or s3)."""
    from raysegment.train.curves import plot_training_curves

    columns = [*COLUMNS, *(k for k in (history[0] if history else {}) if k not in COLUMNS)]  # val_dice_<s>
    lines = [",".join(columns)] + [",".join(f"{row[c]:.8g}" if c != "epoch" else str(row[c]) for c in columns)
                                   for row in history]
    storage.write_text(storage.join(run_dir, "metrics.csv"), "\n".join(lines) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "training_curves.png")
        plot_training_curves(history, png)
        with open(png, "rb") as f:
            storage.write_bytes(storage.join(run_dir, "training_curves.png"), f.read())


def say(message: str) -> None:
    """One line to the driver's console. Ray Train patches print() in workers and, with Ray's redirected
    stdout, prints each line twice; writing to stdout directly prints it once."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _quiet_worker_logs() -> None:
    """Keep the console to our one line per epoch: Ray Data's per-epoch execution banners and Ray Train's
    per-report INFO line (its logger is named by file path, so LoggingConfig(log_level) misses it)."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:  # another Ray version: merely noisier
        pass


def progress_line(row: dict, epochs: int) -> str:
    per = "".join(f" {k[len('val_dice_'):]} {v:.3f}" for k, v in row.items() if k.startswith("val_dice_"))
    return (f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f}  "
            f"val loss {row['val_loss']:.4f}  val dice {row['val_dice']:.4f}"
            f"{f' ({per.strip()})' if per else ''}"
            f"  lr {row['lr']:.1e}  {row['images_per_s']:.1f} img/s  {row['epoch_time_s']:.1f} s")


def _place_model(model, config: TrainConfig, device: torch.device, bf16: bool, rank: int, world: int):
    """The model on its device, wrapped for data parallelism; channels_last with the GPU recipe."""
    import ray.train.torch

    if bf16:
        model = model.to(memory_format=torch.channels_last)
    if config.scaling.device != "cpu":
        return ray.train.torch.prepare_model(model)
    if rank == 0 and bf16:  # say so: the GPUs the workers hold sit idle
        say(f"worker 0 holds GPU(s) {ray.get_gpu_ids()} but runs the model on cpu (scaling.device=cpu)")
    # Not prepare_model: on a GPU worker it would pin the model to the worker's CUDA device.
    model = model.to(device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    return model


def train_loop_per_worker(params: dict) -> dict:
    """Ray Train entry point. params: config (TrainConfig dict), run_dir, torch_threads, split_digest,
    val_check ((images, key checksum) of the val set)."""
    import ray.train
    import ray.train.torch
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    _quiet_worker_logs()
    config = TrainConfig.from_dict(params["config"])
    run_dir = params["run_dir"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(params["torch_threads"])
    torch.manual_seed(config.run.seed)
    # GPU workers use the GPU recipe (bf16 autocast, channels_last) whatever device computes (scaling.device).
    bf16 = bool(params.get("use_gpu"))
    device = torch.device("cpu") if config.scaling.device == "cpu" else ray.train.torch.get_device()

    model = UNet.from_config(config.model)
    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    saved = None
    if checkpoint is not None:
        saved, info = _restore(checkpoint, model)
        state = TrainState(**saved["state"])
        if rank == 0 and info.get("split_digest") != params["split_digest"]:
            say("warning: the data split differs from the checkpoint's (the data set changed since)")
    elif config.run.init_from:  # a fresh run: start from these weights (the run's own checkpoint wins)
        from raysegment.model.checkpoint import load_model
        from raysegment.model.finetune import init_from

        notes = init_from(model, config.structures, load_model(config.run.init_from))
        if rank == 0:
            say(f"starting from the weights of {config.run.init_from}" + "".join(f"; {n}" for n in notes))
    model = _place_model(model, config, device, bf16, rank, world)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr,
                                 weight_decay=config.optim.weight_decay)
    scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=config.optim.lr_factor,
                                  patience=config.optim.lr_patience, min_lr=config.optim.min_lr)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    state.starts.append(state.epoch + 1)
    if rank == 0 and state.epoch:
        say(f"resuming from the checkpoint of epoch {state.epoch}")

    loss_fn = loss_function(config.optim.loss)
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    patience = config.optim.early_stopping_patience
    first_step_time = None  # wall clock, for the driver's start-up cost
    for epoch in range(state.epoch + 1, config.optim.epochs + 1):
        if patience and state.bad_epochs >= patience:
            break
        _maybe_kill(config, run_dir, epoch, rank, world)
        start = time.perf_counter()
        train_loss, train_dice, images, cpu_s, train_s, first_step_at = train_epoch(
            model, train_shard, optimizer, loss_fn, config, epoch, device, bf16)
        first_step_time = first_step_time or first_step_at
        val = validate(model, val_shard, loss_fn, config, device, rank, world, tuple(params["val_check"]),
                       bf16)
        scheduler.step(val["val_loss"])
        row = {"epoch": epoch, "train_loss": train_loss, "train_dice": train_dice, **val,
               "lr": optimizer.param_groups[0]["lr"], "images_per_s": images / max(train_s, 1e-9),
               "epoch_time_s": time.perf_counter() - start, "cpu_ms_per_image": 1000 * cpu_s / max(images, 1)}
        state.epoch = epoch
        state.history.append(row)
        if val["val_dice"] > state.best_dice:  # the seed's save_best_only on val dice
            state.best_dice, state.best_epoch, state.bad_epochs = val["val_dice"], epoch, 0
        else:
            state.bad_epochs += 1
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:  # one copy of the (replicated) weights is enough
                extra = {"epoch": epoch, "metrics": row, "split_digest": params["split_digest"],
                         "run_name": config.run.name, "loss": config.optim.loss}
                _save(tmp, model, optimizer, scheduler, state, config, extra)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(row, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_epoch_{epoch:04d}")
        if rank == 0:
            write_run_outputs(run_dir, state.history)
            say(progress_line(row, config.optim.epochs))
    return {"history": state.history, "best_epoch": state.best_epoch, "best_dice": state.best_dice,
            "starts": state.starts, "epoch": state.epoch, "first_step_time": first_step_time}


def load_train_state(checkpoint_dir: str) -> dict:
    """The train_state.pt of a checkpoint folder (local or s3), e.g. to inspect a run's TrainState."""
    return torch.load(io.BytesIO(storage.read_bytes(storage.join(checkpoint_dir, STATE_FILE))),
                      map_location="cpu", weights_only=True)
