"""Training throughput: Ray Train (1 and 2 workers) against a plain single-process PyTorch loop.

    python bench/train_throughput.py [--n 96] [--size 128] [--epochs 4] [--batch-size 8] [--device cpu|cuda]
                                     [--out bench/results/train_throughput.json]

Same model (UNet base_channels=16, depth=4 by default), same data (N synthetic phantoms preprocessed to
SIZExSIZE), same global batch (a worker gets batch/num_workers), same augmentation, same loss and optimizer,
measured in one run:
  plain      one process, no Ray, torch threads = all cores given (--cpus), data preprocessed in memory;
  ray-1x1    raysegment.train.train, 1 worker, the default plan (1 CPU; the other kept for Ray Data);
  ray-1xall  1 worker holding all --cpus CPUs (equal cores with `plain`);
  ray-2      2 workers, the default plan (2 x 0.5 CPU, 1 torch thread each: equal cores with `plain`).
Throughput = training images per second of an epoch's training phase (validation excluded); "steady" is
the median over epochs 2..E (epoch 1 pays warm-up). Start-up = Ray init + decode/materialize + fit start
to first optimizer step. With --device cuda, `plain` runs on the GPU (bf16 autocast, channels_last) and
the Ray runs use 1 worker per GPU (configurations needing more GPUs than exist are reported as skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

from raysegment.augment import AugmentConfig
from raysegment.losses import loss_function
from raysegment.model import UNet, UNetConfig, count_parameters
from raysegment.preprocess import PreprocessConfig


def make_data(root: str, n: int, size: int) -> str:
    from raysegment.synth import write_dataset

    if not os.path.isdir(os.path.join(root, "cxr")) or len(os.listdir(os.path.join(root, "cxr"))) < n:
        write_dataset(root, n=n, size=size, seed=0, layout="generic")
    return root


def bench_plain(data: str, args, device: str) -> dict:
    """The reference: a single-process loop over the same preprocessed data, batches and augmentation."""
    from raysegment.datasets import load_split_dataset
    from raysegment.train_data import TrainCollate, image_key, prepare_pair

    preprocess = PreprocessConfig(size=args.size)
    pairs = load_split_dataset(data).pairs("train")
    prepared = [prepare_pair(p, preprocess) for p in pairs]
    images, masks = np.stack([i for i, _ in prepared]), np.stack([m for _, m in prepared])
    keys = np.array([image_key(p.image_id) for p in pairs], dtype=np.int64)
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(args.cpus)
    torch.manual_seed(0)
    model = UNet.from_config(UNetConfig(base_channels=args.base_channels, depth=args.depth)).to(device)
    on_gpu = device == "cuda"
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = loss_function("dice")
    epochs = []
    for epoch in range(1, args.epochs + 1):
        collate = TrainCollate(AugmentConfig(), 0, epoch)
        order = np.random.default_rng(epoch).permutation(len(images))
        model.train()
        start = time.perf_counter()
        for s in range(0, len(order), args.batch_size):
            idx = order[s : s + args.batch_size]
            x, y = collate({"image": images[idx], "mask": masks[idx], "key": keys[idx]})
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if on_gpu:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if on_gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        epochs.append(len(images) / seconds)
        print(f"  plain epoch {epoch}: {epochs[-1]:.1f} images/s", flush=True)
    torch.set_num_threads(threads)
    return {"name": "plain", "workers": 0, "threads": args.cpus if device == "cpu" else None,
            "images_per_s": epochs, "startup_s": None}


def bench_ray(data: str, args, device: str, name: str, workers: int, cpus_per_worker: float | None,
              data_cpus: float) -> dict:
    from raysegment.cluster import PlanError
    from raysegment.train import train
    from raysegment.train_config import load_config

    overrides = {
        "data.path": data, "model.base_channels": args.base_channels, "model.depth": args.depth,
        "preprocess.size": args.size, "optim.epochs": args.epochs, "optim.batch_size": args.batch_size // workers,
        "optim.lr": 1e-3, "optim.early_stopping_patience": 0, "scaling.num_workers": workers,
        "scaling.use_gpu": device == "cuda", "scaling.cpus_per_worker": cpus_per_worker,
        "scaling.data_cpus": data_cpus, "run.storage_path": args.runs, "run.name": f"bench-{name}-{time.time_ns()}",
        "run.max_failures": 0, "run.evaluate_test": False,
    }
    try:
        result = train(load_config(None, overrides))
    except PlanError as e:
        print(f"  {name}: skipped: {e}", flush=True)
        return {"name": name, "workers": workers, "skipped": str(e)}
    t = result.timings
    startup = t["ray_init_s"] + t["ingest_s"] + t.get("fit_to_first_step_s", float("nan"))
    return {"name": name, "workers": workers, "cpus_per_worker": cpus_per_worker,
            "images_per_s": [row["images_per_s"] for row in result.history], "startup_s": startup,
            "timings": t}


def steady(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=96, help="phantoms (80%% train)")
    parser.add_argument("--size", type=int, default=128, help="model input side")
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (split over Ray workers)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs for Ray and the plain loop")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "raysegment_bench_train"))
    parser.add_argument("--runs", default=os.path.join(tempfile.gettempdir(), "raysegment_bench_train_runs"))
    parser.add_argument("--out", default="bench/results/train_throughput.json")
    args = parser.parse_args()

    from raysegment.cluster import connect

    data = make_data(args.data, args.n, args.size)
    t0 = time.perf_counter()
    connect(num_cpus=args.cpus)
    ray_init_s = time.perf_counter() - t0
    print(f"ray init {ray_init_s:.1f} s; model {count_parameters(UNet(1, 1, args.base_channels, args.depth)):,} "
          f"parameters; {args.size}x{args.size}, global batch {args.batch_size}, {args.epochs} epochs", flush=True)

    results = [bench_plain(data, args, args.device)]
    if args.device == "cuda":
        runs = [("ray-1gpu", 1, None, 1.0), ("ray-2gpu", 2, None, 1.0)]
    else:
        runs = [("ray-1x1", 1, None, 1.0), ("ray-1xall", 1, float(args.cpus), 0.0), ("ray-2", 2, None, 1.0)]
    for name, workers, cpus, data_cpus in runs:
        results.append(bench_ray(data, args, args.device, name, workers, cpus, data_cpus))

    plain = steady(results[0]["images_per_s"])
    print(f"\n{'setup':<12} {'workers':>7} {'steady img/s':>13} {'vs plain':>9} {'start-up s':>11}  per-epoch img/s")
    for r in results:
        if "skipped" in r:
            print(f"{r['name']:<12} {r['workers']:>7}  skipped (plan does not fit)")
            continue
        r["steady_images_per_s"] = steady(r["images_per_s"])
        r["vs_plain"] = r["steady_images_per_s"] / plain
        startup = "-" if r["startup_s"] is None else f"{r['startup_s']:.1f}"
        print(f"{r['name']:<12} {r['workers']:>7} {r['steady_images_per_s']:>13.1f} {r['vs_plain']:>8.2f}x "
              f"{startup:>11}  " + " ".join(f"{v:.1f}" for v in r["images_per_s"]))
    report = {"args": vars(args), "device": args.device, "machine": platform.platform(),
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "ray_init_s": ray_init_s,
              "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
