"""Bulk inference throughput: the Ray Data pipeline against a plain loop and the bare model forward.

    python bench/infer_throughput.py [--n 3000] [--size 512] [--device cpu|cuda] [--checkpoint URI]

On N synthetic SIZExSIZE PNG X-rays (made once, cached under --data), in one run:
  (a) loop      one process, no Ray: read, decode, preprocess, forward (batched, all torch threads),
                postprocess, encode the mask PNG, write Parquet -- the same functions the pipeline uses;
  (b) pipeline  raysegment.infer.pipeline.run_inference (Ray Data), a fresh output, Ray already started;
  (c) forward   the model alone on pre-decoded uint8 inputs (upper bound), all torch threads, batched.
Prints a table and writes JSON (default bench/results/infer_throughput.json). Without --checkpoint the
model is an untrained UNet(base_channels=16, depth=4) at 256x256 (speed does not depend on the weights).

Besides wall-clock images/s, each variant reports the CPU seconds its processes used (the driver and, for
(b), every Ray process it started: the process tree, sampled from /proc) and images per CPU-second. On a
machine
shared with other work, wall-clock figures mostly measure the neighbours; CPU time is far less affected.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raysegment.data.preprocess import PreprocessConfig, preprocess_image
from raysegment.io import storage
from raysegment.io.decode import decode_image, encode_mask_png
from raysegment.model.checkpoint import ModelSpec, load_model, save_checkpoint
from raysegment.model.forward import forward_probabilities
from raysegment.model.unet import UNet, UNetConfig, count_parameters
from raysegment.postprocess.masks import PostprocessConfig, postprocess, qc_reasons


def tree_cpu_seconds() -> dict[int, float]:
    """pid -> user+system CPU seconds of this process and all its descendants (Ray's raylet and workers),
    from /proc (Linux); empty elsewhere."""
    stats = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)"
            except OSError:  # exited meanwhile
                continue
            stats[int(entry)] = (int(fields[1]),
                                 (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    tree, frontier = {}, [os.getpid()]
    while frontier:
        pid = frontier.pop()
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid][1]
            frontier += [child for child, (ppid, _) in stats.items() if ppid == pid]
    return tree


def timed(fn, *args) -> dict:
    """Run fn(*args) -> dict; add wall seconds and CPU seconds of the process tree (see module docstring).

    The tree is sampled every 0.5 s while fn runs: Ray stops its actors at the end of a dataset and their
    CPU time would otherwise vanish with them (it is not accounted to the raylet).
    """
    before, seen = tree_cpu_seconds(), {}
    done = threading.Event()

    def sample() -> None:
        while True:
            for pid, cpu in tree_cpu_seconds().items():
                seen[pid] = max(seen.get(pid, 0.0), cpu)
            if done.wait(0.5):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    sampler.start()
    out = fn(*args)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    out.setdefault("seconds", wall)
    out["cpu_seconds"] = sum(cpu - before.get(pid, 0.0) for pid, cpu in seen.items())
    return out


def make_data(root: str, n: int, size: int) -> str:
    """N phantoms as PNGs in root/cxr (reused when already there); returns the folder."""
    from raysegment.data.synth import write_dataset

    cxr = os.path.join(root, "cxr")
    if not (os.path.isdir(cxr) and len(os.listdir(cxr)) >= n):
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        write_dataset(root, n=n, size=size, seed=0, layout="generic")
        print(f"made {n} {size}x{size} phantoms in {time.perf_counter() - t0:.0f}s", flush=True)
    return cxr


def make_checkpoint(root: str, base_channels: int, depth: int, model_size: int) -> str:
    uri = os.path.join(root, f"ckpt_b{base_channels}_d{depth}_s{model_size}")
    if not os.path.isdir(uri):
        torch.manual_seed(0)
        spec = ModelSpec(UNetConfig(base_channels=base_channels, depth=depth),
                         PreprocessConfig(size=model_size))
        save_checkpoint(uri, UNet.from_config(spec.model), spec)
    return uri


def bench_forward(checkpoint: str, uris: list[str], batch: int, device: str) -> dict:
    """(c): forward only, on inputs decoded beforehand."""
    loaded = load_model(checkpoint, device)
    if device == "cuda":
        loaded.model.to(memory_format=torch.channels_last)
    images = np.stack([preprocess_image(decode_image(storage.read_bytes(u)).image, loaded.spec.preprocess)[0]
                       for u in uris])
    forward_probabilities(loaded.model, images[:batch], batch, threads=None)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0, cpu0 = time.perf_counter(), time.process_time()
    forward_probabilities(loaded.model, images, batch, threads=None)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"images": len(images), "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - cpu0}


def bench_loop(checkpoint: str, uris: list[str], batch: int, device: str, out_dir: str) -> dict:
    """(a): the plain sequential loop, one process, the same functions as the pipeline."""
    t0 = time.perf_counter()
    loaded = load_model(checkpoint, device)
    if device == "cuda":
        loaded.model.to(memory_format=torch.channels_last)
    spec, config = loaded.spec, PostprocessConfig()
    rows = []
    for start in range(0, len(uris), batch):
        chunk = uris[start : start + batch]
        decoded = [decode_image(storage.read_bytes(u), storage.basename(u)) for u in chunk]
        prepared = [preprocess_image(d.image, spec.preprocess) for d in decoded]
        probs = forward_probabilities(loaded.model, np.stack([p[0] for p in prepared]), batch, threads=None)
        for uri, (_, geo), prob in zip(chunk, prepared, probs, strict=False):
            seg = postprocess(prob, geo, spec.threshold, config)
            rows.append({"image_uri": uri, "status": "ok", "height": geo.height, "width": geo.width,
                         "mask_png": encode_mask_png(seg.mask), "lung_area_px": seg.area_px,
                         "right_lung_area_px": seg.right_area_px, "left_lung_area_px": seg.left_area_px,
                         "mean_confidence": seg.mean_confidence, "qc_reasons": qc_reasons(seg, config)})
    os.makedirs(out_dir, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(out_dir, "part-0.parquet"))
    return {"images": len(rows), "seconds": time.perf_counter() - t0}


def bench_pipeline(checkpoint: str, cxr: str, n: int, batch: int | None, out_dir: str, device: str,
                   num_actors: int | None) -> dict:
    """(b): the Ray Data pipeline (Ray started beforehand, not timed)."""
    from raysegment.cluster.plan import connect
    from raysegment.infer.config import InferConfig, IOSection, ModelSection, ScalingSection
    from raysegment.infer.pipeline import run_inference

    connect()
    shutil.rmtree(out_dir, ignore_errors=True)
    config = InferConfig(IOSection(input=cxr, output=out_dir, limit=n, resume=False),
                         ModelSection(checkpoint=checkpoint),
                         ScalingSection(batch_size=batch, num_actors=num_actors, use_gpu=device == "cuda"))
    result = timed(lambda: {"summary": run_inference(config)})
    summary = result.pop("summary")
    assert summary["ok"] == n and summary["missing"] == 0, summary
    return {**result, "images": n, "execution_seconds": summary["wall_s"], "plan": summary["plan"],
            "batch_size": summary["batch_size"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3000, help="images for (a) and (b)")
    p.add_argument("--forward-n", type=int, default=256, help="images for (c)")
    p.add_argument("--size", type=int, default=512, help="side of the synthetic PNGs")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint",
                   help="checkpoint to benchmark (default: untrained base 16, depth 4, 256 px)")
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--model-size", type=int, default=256, help="model input side")
    p.add_argument("--batch-size", type=int, help="(b) images per actor call (default: the pipeline's)")
    p.add_argument("--loop-batch", type=int, help="(a)/(c) images per forward (default 16 CPU, 32 GPU)")
    p.add_argument("--num-actors", type=int)
    p.add_argument("--only", default="loop,pipeline,forward", help="comma-separated subset to run")
    p.add_argument("--data", default="/tmp/raysegment-bench", help="cache for data and outputs")
    p.add_argument("--out",
                   default=os.path.join(os.path.dirname(__file__), "results", "infer_throughput.json"))
    args = p.parse_args(argv)

    cxr = make_data(os.path.join(args.data, f"synth_{args.size}"), args.n, args.size)
    checkpoint = args.checkpoint or make_checkpoint(args.data, args.base_channels, args.depth,
                                                    args.model_size)
    uris = sorted(os.path.join(cxr, f) for f in os.listdir(cxr))[: args.n]
    loaded = load_model(checkpoint)
    batch = args.loop_batch or (32 if args.device == "cuda" else 16)
    only = set(args.only.split(","))
    results: dict[str, dict] = {}
    load_before = os.getloadavg()  # other work on the machine skews every figure: record it
    if "forward" in only:
        results["forward"] = bench_forward(checkpoint, uris[: args.forward_n], batch, args.device)
    if "loop" in only:
        results["loop"] = timed(bench_loop, checkpoint, uris, batch, args.device,
                                os.path.join(args.data, "out_loop"))
    if "pipeline" in only:
        results["pipeline"] = bench_pipeline(checkpoint, cxr, len(uris), args.batch_size,
                                             os.path.join(args.data, "out_pipeline"), args.device,
                                             args.num_actors)

    labels = {"loop": "(a) sequential loop", "pipeline": "(b) Ray Data pipeline",
              "forward": "(c) forward only (upper bound)"}
    loop_rate = results["loop"]["images"] / results["loop"]["seconds"] if "loop" in results else None
    loop_cpu_rate = results["loop"]["images"] / results["loop"]["cpu_seconds"] if "loop" in results else None
    print(f"\n{'variant':32s} {'images':>6s} {'wall s':>7s} {'images/s':>8s} {'vs (a)':>6s} {'CPU s':>7s} "
          f"{'img/CPU-s':>9s} {'vs (a)':>6s}")
    for key in ("loop", "pipeline", "forward"):
        if key in results:
            r = results[key]
            r["images_per_s"] = r["images"] / r["seconds"]
            r["vs_loop"] = r["images_per_s"] / loop_rate if loop_rate else None
            r["images_per_cpu_s"] = r["images"] / r["cpu_seconds"]
            r["cpu_vs_loop"] = r["images_per_cpu_s"] / loop_cpu_rate if loop_cpu_rate else None
            ratio = f"{r['vs_loop']:.2f}x" if loop_rate else "-"
            cpu_ratio = f"{r['cpu_vs_loop']:.2f}x" if loop_cpu_rate else "-"
            print(f"{labels[key]:32s} {r['images']:6d} {r['seconds']:7.1f} {r['images_per_s']:8.2f} "
                  f"{ratio:>6s} {r['cpu_seconds']:7.1f} {r['images_per_cpu_s']:9.3f} {cpu_ratio:>6s}")
    if "pipeline" in results:
        r = results["pipeline"]
        print(f"(b) plan: {r['plan']}, batch {r['batch_size']}; Ray Data execution alone "
              f"{r['execution_seconds']:.1f}s = {r['images'] / r['execution_seconds']:.2f} images/s")

    report = {
        "n": len(uris), "image_size": args.size, "device": args.device, "loop_batch": batch,
        "model": {"checkpoint": checkpoint, **loaded.spec.to_dict(),
                  "parameters": count_parameters(loaded.model)},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                    "platform": platform.platform(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None},
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"load average (1 min) before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
