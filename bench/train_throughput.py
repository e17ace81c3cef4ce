"""Training throughput: Ray Train (1 and 2 workers) against a plain single-process PyTorch loop.

    python bench/train_throughput.py [--n 80] [--size 96] [--epochs 4] [--batch-size 8] [--device cpu|cuda]
                                     [--out bench/results/train_throughput.json]

Same model (UNet base_channels=16, depth=4 by default), same data (N synthetic phantoms preprocessed to
SIZExSIZE), same global batch (a worker gets batch/num_workers), same augmentation, loss and optimizer.
Setups, run in the order of --sequence (default: plain,plain-1t,ray-1x1,ray-1xall,ray-2,plain):
  plain      one process, no Ray, data in memory, torch threads = all --cpus;
  plain-1t   the same with 1 torch thread;
  ray-1x1    raysegment.train.driver.train, 1 worker, the default plan (1 CPU, 1 thread; 1 CPU kept for Ray
  Data);
  ray-1xall  1 worker holding all --cpus CPUs and threads;
  ray-2      2 workers, the default plan (2 x 0.5 CPU, 1 torch thread each);
  ray-1gpu, ray-2gpu  (--device cuda) 1 and 2 GPU workers.
Ray starts at the first Ray setup (plain runs before it have the machine to themselves). Each Ray run is
compared with the plain runs using as many torch threads in total measured just before and just after it
(their mean): on a shared machine the load drifts between runs, so e.g. --sequence
plain,ray-2,plain,ray-2,plain gives two bracketed comparisons.
Throughput = training images per second of an epoch's training phase (validation excluded); "steady" is
the median over epochs 2..E (epoch 1 pays warm-up). CPU cost = process CPU milliseconds per training
image, all workers summed. Start-up = Ray init + decode/materialize + fit start to the first step.
With --device cuda, the plain loop runs on the GPU (bf16 autocast, channels_last) and the Ray runs use
1 worker per GPU (configurations needing more GPUs than exist are reported as skipped).

On a machine shared with other work, one process with 2 intra-op threads can slow down ten-fold: an
OpenMP thread spin-waits for its sibling while that one is descheduled (measured on the 2-core CI box
under load: 0.45 s per step with 1 thread, 4.3 s with 2). Hence --omp-wait-policy PASSIVE by default
(waiting threads sleep instead of spinning), set before torch loads and inherited by Ray's workers, so
both sides get the same treatment; `--omp-wait-policy default` measures the library default. The load
averages at start and end are saved in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time


def _omp_policy_from_argv() -> None:
    # OpenMP reads OMP_WAIT_POLICY when the library loads: set it before torch is imported.
    argv = sys.argv[1:]
    policy = argv[argv.index("--omp-wait-policy") + 1] if "--omp-wait-policy" in argv[:-1] else "PASSIVE"
    if policy.upper() != "DEFAULT":
        os.environ["OMP_WAIT_POLICY"] = policy.upper()


_omp_policy_from_argv()

# After setting OMP_WAIT_POLICY: it is read when torch's OpenMP runtime loads.
import numpy as np  # noqa: E402
import torch  # noqa: E402

from raysegment.data.augment import AugmentConfig  # noqa: E402
from raysegment.data.preprocess import PreprocessConfig  # noqa: E402
from raysegment.model.unet import UNet, UNetConfig, count_parameters  # noqa: E402
from raysegment.train.losses import loss_function  # noqa: E402


def make_data(root: str, n: int, size: int) -> str:
    from raysegment.data.synth import write_dataset

    if not os.path.isdir(os.path.join(root, "cxr")) or len(os.listdir(os.path.join(root, "cxr"))) < n:
        write_dataset(root, n=n, size=size, seed=0, layout="generic")
    return root


def bench_plain(data: str, args, device: str, name: str, threads: int) -> dict:
    """The reference: a single-process loop over the same preprocessed data, batches and augmentation."""
    from raysegment.data.datasets import load_split_dataset
    from raysegment.train.data import TrainCollate, image_key, prepare_pair

    preprocess = PreprocessConfig(size=args.size)
    pairs = load_split_dataset(data).pairs("train")
    prepared = [prepare_pair(p, preprocess) for p in pairs]
    images, masks = np.stack([i for i, _ in prepared]), np.stack([m for _, m in prepared])
    keys = np.array([image_key(p.image_id) for p in pairs], dtype=np.int64)
    threads_before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = UNet.from_config(UNetConfig(base_channels=args.base_channels, depth=args.depth)).to(device)
    on_gpu = device == "cuda"
    if on_gpu:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = loss_function("dice")
    epochs, cpu_ms = [], []
    for epoch in range(1, args.epochs + 1):
        collate = TrainCollate(AugmentConfig(), 0, epoch)
        order = np.random.default_rng(epoch).permutation(len(images))
        model.train()
        start, cpu_start = time.perf_counter(), time.process_time()
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
        cpu_ms.append(1000 * (time.process_time() - cpu_start) / len(images))
        print(f"  {name} epoch {epoch}: {epochs[-1]:.1f} images/s, {cpu_ms[-1]:.0f} CPU ms/image", flush=True)
    torch.set_num_threads(threads_before)
    return {"name": name, "workers": 0, "threads": threads, "images_per_s": epochs,
            "cpu_ms_per_image": cpu_ms,
            "startup_s": None}


def bench_ray(data: str, args, device: str, name: str, workers: int, cpus_per_worker: float | None,
              data_cpus: float, threads: int) -> dict:
    from raysegment.errors import PlanError
    from raysegment.train.config import load_config
    from raysegment.train.driver import train

    overrides = {
        "data.path": data, "model.base_channels": args.base_channels, "model.depth": args.depth,
        "preprocess.size": args.size, "optim.epochs": args.epochs,
        "optim.batch_size": args.batch_size // workers,
        "optim.lr": 1e-3, "optim.early_stopping_patience": 0, "scaling.num_workers": workers,
        "scaling.use_gpu": device == "cuda", "scaling.cpus_per_worker": cpus_per_worker,
        "scaling.data_cpus": data_cpus, "run.storage_path": args.runs,
        "run.name": f"bench-{name}-{time.time_ns()}",
        "run.max_failures": 0, "run.evaluate_test": False,
    }
    try:
        result = train(load_config(None, overrides))
    except PlanError as e:
        print(f"  {name}: skipped: {e}", flush=True)
        return {"name": name, "workers": workers, "skipped": str(e)}
    t = result.timings
    startup = t["ingest_s"] + t.get("fit_to_first_step_s", float("nan"))  # + Ray init, added by main()
    return {"name": name, "workers": workers, "threads": threads, "cpus_per_worker": cpus_per_worker,
            "images_per_s": [row["images_per_s"] for row in result.history],
            "cpu_ms_per_image": [row["cpu_ms_per_image"] for row in result.history], "startup_s": startup,
            "timings": t}


# name -> (Ray workers (0 = plain loop), CPUs per worker (None = plan, "all" = --cpus), data CPUs, threads
# (None = --cpus)); for Ray runs `threads` is the total over workers, as the plan sets them.
SETUPS = {
    "plain": (0, None, 0.0, None),
    "plain-1t": (0, None, 0.0, 1),
    "ray-1x1": (1, None, 1.0, 1),
    "ray-1xall": (1, "all", 0.0, None),
    "ray-2": (2, None, 1.0, 2),
    "ray-1gpu": (1, None, 1.0, 1),
    "ray-2gpu": (2, None, 1.0, 2),
}
DEFAULT_SEQUENCE_CPU = "plain,plain-1t,ray-1x1,ray-1xall,ray-2,plain"
DEFAULT_SEQUENCE_GPU = "plain,ray-1gpu,ray-2gpu,plain"


def steady(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=80, help="phantoms (80%% train)")
    parser.add_argument("--size", type=int, default=96, help="model input side")
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (split over Ray workers)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs for Ray and the plain loop")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "raysegment_bench_train"))
    parser.add_argument("--runs", default=os.path.join(tempfile.gettempdir(), "raysegment_bench_train_runs"))
    parser.add_argument("--out", default="bench/results/train_throughput.json")
    parser.add_argument("--sequence", help="comma-separated setups to run in order (default: "
                        f"{DEFAULT_SEQUENCE_CPU}; with cuda {DEFAULT_SEQUENCE_GPU}); a setup may repeat")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                        help="OMP_WAIT_POLICY for the plain loop and Ray's workers (see above)")
    args = parser.parse_args()
    load_at_start = os.getloadavg()  # a shared machine's other work shows here

    import ray

    from raysegment.cluster.plan import connect

    data = make_data(args.data, args.n, args.size)
    print(f"model {count_parameters(UNet(1, 1, args.base_channels, args.depth)):,} parameters; "
          f"{args.size}x{args.size}, global batch {args.batch_size}, {args.epochs} epochs", flush=True)
    default = DEFAULT_SEQUENCE_GPU if args.device == "cuda" else DEFAULT_SEQUENCE_CPU
    sequence = (args.sequence or default).split(",")
    unknown = [name for name in sequence if name not in SETUPS]
    if unknown:
        parser.error(f"unknown setup(s) {unknown}; choose from {', '.join(SETUPS)}")
    results, ray_init_s = [], None
    for i, name in enumerate(sequence):
        workers, cpus, data_cpus, threads = SETUPS[name]
        label = name if sequence.count(name) == 1 else f"{name}.{sequence[: i + 1].count(name)}"
        threads = threads or args.cpus
        if workers == 0:  # Ray is not up until the first Ray setup: it would compete for the cores
            results.append(bench_plain(data, args, args.device, label, threads))
            continue
        if ray_init_s is None:
            t0 = time.perf_counter()
            connect(num_cpus=args.cpus)
            ray_init_s = time.perf_counter() - t0
        cpus = float(args.cpus) if cpus == "all" else cpus
        results.append(bench_ray(data, args, args.device, label, workers, cpus, data_cpus, threads))
        if results[-1].get("startup_s") is not None:
            results[-1]["startup_s"] += ray_init_s  # what `raysegment train` pays from a cold start
    if ray_init_s is not None:
        ray.shutdown()

    for r in results:
        if "skipped" not in r:
            r["steady_images_per_s"] = steady(r["images_per_s"])
            r["steady_cpu_ms_per_image"] = steady(r["cpu_ms_per_image"])
    # Reference: the plain runs with the same total thread count measured just before and just after (their
    # mean), since on a shared machine the load drifts between runs; a plain run is its own reference.
    for i, r in enumerate(results):
        if "skipped" in r:
            continue
        same = [j for j, p in enumerate(results) if p["workers"] == 0 and p["threads"] == r["threads"]]
        if r["workers"] == 0:
            refs = [r]
        else:
            before, after = [j for j in same if j < i], [j for j in same if j > i]
            refs = ([results[j] for j in (before[-1:] + after[:1])]
                    or [p for p in results if p["workers"] == 0])
        r["reference"] = "+".join(p["name"] for p in refs)
        ref_ips = statistics.mean(p["steady_images_per_s"] for p in refs)
        ref_cpu = statistics.mean(p["steady_cpu_ms_per_image"] for p in refs)
        r["vs_plain"] = r["steady_images_per_s"] / ref_ips
        r["cpu_efficiency_vs_plain"] = ref_cpu / r["steady_cpu_ms_per_image"]

    print(f"\n{'setup':<12} {'threads':>7} {'steady img/s':>13} {'vs plain':>9} {'CPU ms/img':>11} "
          f"{'vs plain':>9} {'start-up s':>11}  {'reference':<20} per-epoch img/s")
    for r in results:
        if "skipped" in r:
            print(f"{r['name']:<12} {r['threads']:>7}  skipped (plan does not fit)")
            continue
        startup = "-" if r["startup_s"] is None else f"{r['startup_s']:.1f}"
        print(f"{r['name']:<12} {r['threads']:>7} {r['steady_images_per_s']:>13.1f} {r['vs_plain']:>8.2f}x "
              f"{r['steady_cpu_ms_per_image']:>11.0f} {r['cpu_efficiency_vs_plain']:>8.2f}x {startup:>11}  "
              f"{r['reference']:<20} " + " ".join(f"{v:.1f}" for v in r["images_per_s"]))
    print("vs plain: throughput / the reference's (the plain runs with as many threads just before and "
          "after); CPU vs plain: the reference's CPU ms per image / this one's (above 1 = cheaper); "
          "threads: in total.")
    report = {"args": vars(args), "device": args.device, "machine": platform.platform(),
              "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "ray_init_s": ray_init_s,
              "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
              "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
