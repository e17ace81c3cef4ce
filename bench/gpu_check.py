"""The prepared GPU check: one run, about 4 minutes on one H100/H200 with 16 CPUs, three parts.

    bash bench/gpu_check.sh                          # on the GPU host (installs Ray from .whl/ if missing)
    python bench/gpu_check.py --device cpu --quick   # the same on CPU in < 2 min (tests/test_gpu_path.py)

  1 forward   the seed UNet (base 64, depth 4) at 512x512, bf16 autocast + channels_last, eval mode: a batch
              sweep (8, 16, 32, 64), then torch.compile at the best batch. images/s, achieved TFLOP/s (FLOPs
              counted by torch.utils.flop_counter on the real model), MFU against the device's dense bf16
              peak (PEAK_BF16_TFLOPS), peak memory; also model.forward.forward_probabilities at the best
              batch (the forward an inference actor runs: uint8 in, uint8 out, host conversions and copies
              included).
  2 pipeline  raysegment.infer.pipeline.run_inference (Ray Data) on this host, twice: (a) 512x512 8-bit
              PNGs, (b) realistic originals (~3000x2500: 16-bit PNG, 8-bit JPEG, uncompressed 16-bit DICOM).
              A few files per format, repeated through a manifest (hard links: distinct URIs, no decode
              cache). images/s and its ratio to (1); per-stage figures: single-core decode+preprocess and
              postprocess images/s per format, the pipeline's own per-row stage times, and from them the
              CPUs one GPU needs per format = forward images/s x (decode + postprocess CPU-seconds per image).
  3 train     raysegment.train.driver.train with configs/montgomery-gpu.yaml on synthetic 512x512
              phantoms, a fixed number of steps (epochs x steps per epoch): images/s of the last epoch's
              training phase and training MFU (forward + backward FLOPs counted the same way).

Each part runs under its own time limit (SIGALRM; a part cut short records status "timeout") and the JSON
(default bench/results/gpu_check.json) is rewritten after every part, so a run killed from outside still
reports what it finished. Installs nothing. The model is untrained: speed does not depend on weights.

--device cpu runs the GPU recipe on the CPU: Ray starts with a fake GPU (num_gpus=1), so the pipeline's
actors and the training worker ask for and get a GPU, and the model runs on the CPU by the user-facing
device override (InferConfig.scaling.device / TrainConfig.scaling.device = "cpu"). --quick shrinks
everything (base 8, 128 px, a few files, no torch.compile) so that this runs end to end on a 2-core box.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import time
import traceback

import numpy as np
import torch

from raysegment.data.preprocess import PreprocessConfig, preprocess_image
from raysegment.io.decode import decode_image, encode_mask_png
from raysegment.model.forward import forward_probabilities, gpu_recipe
from raysegment.model.unet import UNet, count_parameters
from raysegment.postprocess.masks import PostprocessConfig, postprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dense (no 2:4 sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets. First match wins
# (the device name contains every word of the key), so the PCIe H100 comes before the SXM one.
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.0,
    "H100": 989.0,  # SXM5 (the name says "H100 80GB HBM3")
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
}


def device_peak(name: str) -> tuple[str | None, float | None]:
    """(table key, dense bf16 peak TFLOP/s) for a CUDA device name, or (None, None) when unknown/CPU."""
    for key, peak in PEAK_BF16_TFLOPS.items():
        if all(word in name for word in key.split()):
            return key, peak
    return None, None


class PartTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise PartTimeout in the main thread after `seconds` (SIGALRM; Unix)."""
    def expire(signum, frame):
        raise PartTimeout(f"time limit of {seconds:g} s reached")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn) -> int:
    """FLOPs torch.utils.flop_counter counts for fn() (2 per multiply-add of convs and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def rate(fn, device: torch.device, images_per_call: int, min_seconds: float, min_calls: int = 3) -> float:
    """images/s of fn() after two warm-up calls, timed over >= min_calls calls and >= min_seconds."""
    for _ in range(2):
        fn()
    sync(device)
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < min_seconds:
        fn()
        calls += 1
        sync(device)
    return calls * images_per_call / (time.perf_counter() - t0)


def _tflops(flops_per_image: int, images_per_s: float, peak: float | None) -> dict:
    achieved = flops_per_image * images_per_s / 1e12
    return {"tflops": round(achieved, 3), "mfu": round(achieved / peak, 4) if peak else None}


# --- part 1: forward -------------------------------------------------------------------------------

def part_forward(out: dict, args, device: torch.device, peak: float | None) -> None:
    torch.manual_seed(0)
    model = UNet(base_channels=args.base_channels, depth=args.depth).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    s = args.size
    with torch.no_grad():
        x1, precision = gpu_recipe(torch.rand(1, 1, s, s, device=device), True)
        with precision:
            flops = count_flops(lambda: model(x1))
    out.update(model={"base_channels": args.base_channels, "depth": args.depth, "size": s,
                      "parameters": count_parameters(model)}, flops_per_image=flops, sweep=[])
    best = None
    for batch in args.batches:
        row = {"batch": batch}
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            x, precision = gpu_recipe(torch.rand(batch, 1, s, s, device=device), True)

            def step(x=x, precision=precision):
                with torch.inference_mode(), precision:
                    model(x)

            row["images_per_s"] = round(rate(step, device, batch, args.min_seconds), 2)
            row.update(_tflops(flops, row["images_per_s"], peak))
            if device.type == "cuda":
                row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        except torch.cuda.OutOfMemoryError as e:
            row["error"] = f"out of memory: {str(e).splitlines()[0]}"
            out["sweep"].append(row)
            break
        out["sweep"].append(row)
        print(f"  forward batch {batch}: {row['images_per_s']:.1f} images/s, {row['tflops']:.1f} TFLOP/s"
              + (f", MFU {row['mfu']:.1%}" if row["mfu"] is not None else ""), flush=True)
        if best is None or row["images_per_s"] > best["images_per_s"]:
            best = row
    out["best"] = best
    b = best["batch"]
    images = (np.random.default_rng(0).random((4 * b, s, s)) * 255).astype(np.uint8)
    actor_rate = rate(lambda: forward_probabilities(model, images, b, threads=None, bf16=True), device,
                      len(images), args.min_seconds, min_calls=1)
    out["forward_probabilities"] = {"batch": b, "images_per_s": round(actor_rate, 2),
                                    "vs_model_only": round(actor_rate / best["images_per_s"], 3)}
    print(f"  forward_probabilities (uint8 in/out, as an actor) at batch {b}: {actor_rate:.1f} images/s",
          flush=True)
    if args.compile:
        x, precision = gpu_recipe(torch.rand(b, 1, s, s, device=device), True)
        compiled = torch.compile(model)
        t0 = time.perf_counter()
        with torch.no_grad(), precision:
            compiled(x)
        sync(device)
        compile_s = time.perf_counter() - t0

        def step_compiled():
            with torch.no_grad(), precision:
                compiled(x)

        r = rate(step_compiled, device, b, args.min_seconds)
        out["compiled"] = {"batch": b, "compile_s": round(compile_s, 1), "images_per_s": round(r, 2),
                           **_tflops(flops, r, peak)}
        print(f"  torch.compile batch {b}: {r:.1f} images/s (compile {compile_s:.0f} s)", flush=True)


# --- part 2: pipeline ------------------------------------------------------------------------------

def original_images(n: int, height: int, width: int) -> list[tuple[str, bytes]]:
    """n realistic originals per format, (file name, bytes): 16-bit PNG, 8-bit JPEG, 16-bit DICOM."""
    import cv2

    from raysegment.data.synth import make_phantom_16bit
    from raysegment.io.decode import encode_png
    from raysegment.testing.dicom import make_dicom_bytes

    files = []
    for i in range(n):
        image16, _ = make_phantom_16bit(11, i, max(height, width))
        image16 = np.ascontiguousarray(image16[:height, :width])
        files.append((f"orig_{i:03d}.png", encode_png(image16)))
        _, jpg = cv2.imencode(".jpg", (image16 >> 8).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
        files.append((f"orig_{i:03d}.jpg", jpg.tobytes()))
        files.append((f"orig_{i:03d}.dcm", make_dicom_bytes(image16, pixel_spacing=(0.143, 0.143))))
    return files


def write_repeated(folder: str, files: list[tuple[str, bytes]], n: int) -> str:
    """Write the files once and a manifest of n inputs that cycles through them by hard links (distinct
    URIs, so resume and dedup treat them as different inputs). Returns the manifest path."""
    src = os.path.join(folder, "src")
    rep = os.path.join(folder, "inputs")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(src)
    os.makedirs(rep)
    for name, data in files:
        with open(os.path.join(src, name), "wb") as f:
            f.write(data)
    uris = []
    for j in range(n):
        name = files[j % len(files)][0]
        link = os.path.join(rep, f"r{j:06d}_{name}")
        try:
            os.link(os.path.join(src, name), link)
        except OSError:
            os.symlink(os.path.join(src, name), link)
        uris.append(link)
    manifest = os.path.join(folder, "manifest.csv")
    with open(manifest, "w") as f:
        f.write("image_uri\n" + "".join(u + "\n" for u in uris))
    return manifest


def stage_costs(files: list[tuple[str, bytes]], preprocess: PreprocessConfig, min_seconds: float) -> dict:
    """Single-core decode+preprocess and postprocess seconds per image, per format (this process, 1 thread).

    Postprocess gets a phantom's true lung mask as the probability: a realistic mask shape (the check's
    model is untrained, its masks are not)."""
    import cv2

    from raysegment.data.preprocess import geometry
    from raysegment.data.synth import make_phantom

    cv2.setNumThreads(1)  # as in the pipeline's stage tasks
    by_format: dict[str, list[tuple[str, bytes]]] = {}
    for name, data in files:
        by_format.setdefault(name.rsplit(".", 1)[1], []).append((name, data))
    probs = [make_phantom(5, i, preprocess.size).mask.astype(np.uint8) * 255 for i in range(3)]
    out = {}
    for fmt, group in by_format.items():
        decode_s, post_s, i = [], [], 0
        t_end = time.perf_counter() + min_seconds
        while i < 2 * len(group) or time.perf_counter() < t_end:
            name, data = group[i % len(group)]
            t0 = time.process_time()
            decoded = decode_image(data, name)
            _, geo = preprocess_image(decoded.image, preprocess)
            decode_s.append(time.process_time() - t0)
            t0 = time.process_time()
            seg = postprocess(probs[i % len(probs)], geometry(geo.height, geo.width, preprocess), 0.5,
                              PostprocessConfig())
            encode_mask_png(seg.mask)
            post_s.append(time.process_time() - t0)
            i += 1
        d, p = statistics.median(decode_s), statistics.median(post_s)
        out[fmt] = {"images": i, "decode_preprocess_ms": round(d * 1000, 2),
                    "postprocess_ms": round(p * 1000, 2),
                    "decode_images_per_s_per_cpu": round(1 / d, 1), "cpu_s_per_image": round(d + p, 5)}
    return out


def run_pipeline(args, checkpoint: str, manifest: str, output: str) -> dict:
    from raysegment.infer.config import InferConfig, IOSection, ModelSection, ScalingSection
    from raysegment.infer.pipeline import run_inference
    from raysegment.outputs.results import read_results

    shutil.rmtree(output, ignore_errors=True)
    config = InferConfig(IOSection(input=manifest, output=output, resume=False),
                         ModelSection(checkpoint=checkpoint),
                         ScalingSection(batch_size=args.pipeline_batch,
                                        device="cpu" if args.device == "cpu" else None))
    summary = run_inference(config)
    rows = read_results(output, columns=["image_format", "read_ms", "decode_ms", "infer_ms",
                                         "postprocess_ms"]).to_pylist()
    stages = {}
    for fmt in sorted({r["image_format"] for r in rows}):
        mine = [r for r in rows if r["image_format"] == fmt]
        stages[fmt] = {k: round(statistics.median(r[k] for r in mine if r[k] is not None), 2)
                       for k in ("read_ms", "decode_ms", "infer_ms", "postprocess_ms")}
    return {"images": summary["processed"], "ok": summary["ok"], "errors": summary["errors"],
            "wall_s": summary["wall_s"], "images_per_s": summary["images_per_s"], "plan": summary["plan"],
            "batch_size": summary["batch_size"], "median_stage_ms_per_row": stages}


def part_pipeline(out: dict, args, work: str, report: dict, which: str) -> None:
    from raysegment.data.synth import make_phantom
    from raysegment.io.decode import encode_png
    from raysegment.model.checkpoint import ModelSpec, save_checkpoint
    from raysegment.model.unet import UNetConfig

    preprocess = PreprocessConfig(size=args.size)
    checkpoint = os.path.join(work, "checkpoint")
    if not os.path.isdir(checkpoint):
        torch.manual_seed(0)
        spec = ModelSpec(UNetConfig(base_channels=args.base_channels, depth=args.depth), preprocess)
        save_checkpoint(checkpoint, UNet.from_config(spec.model), spec)
    if which == "png512":
        files = [(f"syn_{i:03d}.png", encode_png(make_phantom(5, i, args.size).image))
                 for i in range(args.distinct_files)]
    else:
        files = original_images(max(1, args.distinct_files // 3), *args.original_hw)
    costs = stage_costs(files, preprocess, args.min_seconds)
    out["stage_costs_single_cpu"] = costs
    forward_part = (report["parts"].get("forward") or {}).get("result") or {}
    forward_rate = (forward_part.get("best") or {}).get("images_per_s")
    actor_rate = (forward_part.get("forward_probabilities") or {}).get("images_per_s")
    # Enough inputs for ~target seconds at the slower of the GPU and the CPUs' decode rate.
    cpu_rate = (os.cpu_count() or 1) / statistics.mean(c["cpu_s_per_image"] for c in costs.values())
    expected = min(forward_rate or cpu_rate, cpu_rate)
    n = int(min(args.max_inputs, max(args.min_inputs, expected * args.pipeline_seconds)))
    if forward_rate:  # CPUs one GPU needs, per format (before the pipeline: a timeout keeps it)
        out["cpus_per_gpu"] = {fmt: round(forward_rate * c["cpu_s_per_image"], 2) for fmt, c in costs.items()}
    manifest = write_repeated(os.path.join(work, which), files, n)
    print(f"  pipeline {which}: {n} inputs ({len(files)} distinct files)", flush=True)
    out.update(run_pipeline(args, checkpoint, manifest, os.path.join(work, which + "_out")))
    if forward_rate:
        out["vs_forward"] = round(out["images_per_s"] / forward_rate, 3)  # model alone, eager
        out["vs_forward_probabilities"] = round(out["images_per_s"] / actor_rate, 3) if actor_rate else None


# --- part 3: training ------------------------------------------------------------------------------

def train_flops_per_image(config, device: torch.device) -> int:
    """FLOPs of one training step per image: forward + backward of the GPU recipe (bf16, channels_last)."""
    from raysegment.train.losses import loss_function

    torch.manual_seed(0)
    batch, size = config.optim.batch_size, config.preprocess.size
    model = UNet.from_config(config.model).to(device).to(memory_format=torch.channels_last).train()
    loss_fn = loss_function(config.optim.loss)
    x, precision = gpu_recipe(torch.rand(batch, 1, size, size, device=device), True)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()

    def step():
        with precision:
            logits = model(x)
        loss_fn(logits, y).backward()

    flops = count_flops(step) // batch
    if device.type == "cuda":
        del model, x, y
        torch.cuda.empty_cache()
    return flops


def part_train(out: dict, args, work: str, device: torch.device, peak: float | None) -> None:
    from raysegment.data.synth import write_dataset
    from raysegment.train.config import load_config
    from raysegment.train.driver import train

    data = os.path.join(work, "train_data")
    if not os.path.isdir(data):
        write_dataset(data, n=args.train_images, size=args.size, seed=3, layout="generic")
    overrides = {"data.path": data, "optim.epochs": args.train_epochs, "optim.early_stopping_patience": 0,
                 "run.name": f"gpu-check-{int(time.time())}", "run.storage_path": os.path.join(work, "runs"),
                 "run.evaluate_test": False, "run.max_failures": 0}
    if args.quick:
        overrides.update({"model.base_channels": args.base_channels, "preprocess.size": args.size})
    if args.device == "cpu":
        overrides["scaling.device"] = "cpu"
    config = load_config(os.path.join(ROOT, "configs", "montgomery-gpu.yaml"), overrides)
    batch, size = config.optim.batch_size, config.preprocess.size
    flops = train_flops_per_image(config, device)
    n_train = round(args.train_images * config.data.split[0])
    out.update({"config": "configs/montgomery-gpu.yaml", "base_channels": config.model.base_channels,
                "size": size, "batch_per_worker": batch, "workers": config.scaling.num_workers,
                "steps_per_epoch_approx": math.ceil(n_train / batch), "train_flops_per_image": flops})
    result = train(config)
    last = result.history[-1]
    out.update({"epochs": len(result.history), "images_per_s_last_epoch": round(last["images_per_s"], 2),
                "images_per_s_per_epoch": [round(r["images_per_s"], 2) for r in result.history],
                "timings_s": {k: round(v, 1) for k, v in result.timings.items()}})
    out.update(_tflops(flops, last["images_per_s"], peak))


# --- driver ----------------------------------------------------------------------------------------

def write_json(path: str, report: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, default=str)
    os.replace(tmp, path)


def print_table(report: dict) -> None:
    print(f"\nGPU check on {report['device']['name']} (peak used: {report['device']['peak_label']} "
          f"{report['device']['peak_bf16_tflops']} TFLOP/s dense bf16); {report['device']['cpus']} CPUs")
    print(f"{'part':34s} {'status':8s} {'images/s':>9s} {'TFLOP/s':>8s} {'MFU':>6s} {'note'}")

    def line(label, status, r=None, note=""):
        r = r or {}
        ips = r.get("images_per_s", r.get("images_per_s_last_epoch"))
        mfu = r.get("mfu")
        print(f"{label:34s} {status:8s} {ips if ips is not None else '-':>9} {r.get('tflops', '-'):>8} "
              f"{f'{mfu:.1%}' if mfu is not None else '-':>6} {note}")

    for name in ("forward", "pipeline_png512", "pipeline_originals", "train"):
        part = report["parts"].get(name)
        if part is None:
            continue
        status, r = part["status"], part.get("result") or {}
        if name == "forward" and r:
            for row in r.get("sweep", []):
                line(f"1 forward bf16 batch {row['batch']}", status, row,
                     f"peak mem {row.get('peak_memory_gib', '-')} GiB {row.get('error', '')}")
            if "forward_probabilities" in r:
                fp = r["forward_probabilities"]
                line(f"1 forward_probabilities batch {fp['batch']}", status, fp,
                     f"{fp['vs_model_only']}x model only")
            if "compiled" in r:
                line(f"1 torch.compile batch {r['compiled']['batch']}", status, r["compiled"],
                     f"compile {r['compiled']['compile_s']} s")
        elif name.startswith("pipeline") and r:
            line(f"2 {name}", status, r, f"{r.get('vs_forward', '-')}x forward; {r.get('plan', '')}")
            for fmt, c in r.get("stage_costs_single_cpu", {}).items():
                need = (r.get("cpus_per_gpu") or {}).get(fmt, "-")
                print(f"    {fmt:5s} decode+preprocess {c['decode_preprocess_ms']:8.2f} ms/img/CPU "
                      f"({c['decode_images_per_s_per_cpu']} img/s per CPU), "
                      f"postprocess {c['postprocess_ms']:.2f} ms"
                      f" -> {need} CPUs per GPU")
        elif name == "train" and "batch_per_worker" in r:
            line("3 train (montgomery-gpu.yaml)", status, r,
                 f"{r.get('epochs', '-')} epochs x ~{r.get('steps_per_epoch_approx')} steps, "
                 f"batch {r.get('batch_per_worker')}")
        else:
            line(name, status, None, part.get("error", ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes, no torch.compile (a CPU smoke run)")
    p.add_argument("--parts", default="forward,pipeline,train", help="comma-separated subset")
    p.add_argument("--work", default="/tmp/raysegment-gpu-check", help="scratch folder (data, outputs)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gpu_check.json"))
    p.add_argument("--cpus", type=int, help="CPUs for Ray (default: all)")
    p.add_argument("--limit-scale", type=float, default=1.0, help="multiply every part's time limit")
    args = p.parse_args(argv)
    if args.quick:
        args.base_channels, args.depth, args.size, args.batches = 8, 4, 128, [2, 4]
        args.min_seconds, args.compile, args.pipeline_batch = 0.3, False, None  # None: GPU_MICRO_BATCH
        args.distinct_files, args.original_hw, args.min_inputs, args.max_inputs = 3, (300, 250), 12, 12
        args.pipeline_seconds, args.train_images, args.train_epochs = 1, 24, 1
        limits = {"forward": 40, "pipeline_png512": 60, "pipeline_originals": 60, "train": 90}
    else:
        args.base_channels, args.depth, args.size, args.batches = 64, 4, 512, [8, 16, 32, 64]
        args.min_seconds, args.compile, args.pipeline_batch = 1.5, args.device == "cuda", None
        args.distinct_files, args.original_hw, args.min_inputs, args.max_inputs = 48, (3000, 2500), 256, 15000
        args.pipeline_seconds, args.train_images, args.train_epochs = 20, 160, 3
        # 240 s in all: the device lease is ~15 min, start-up included; Ray's start comes on top.
        limits = {"forward": 70, "pipeline_png512": 55, "pipeline_originals": 60, "train": 55}
    limits = {k: v * args.limit_scale for k, v in limits.items()}
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    label, peak = device_peak(name) if device.type == "cuda" else (None, None)
    parts = args.parts.split(",")
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    report = {
        "device": {"type": args.device, "name": name, "peak_label": label, "peak_bf16_tflops": peak,
                   "cpus": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda},
        "quick": args.quick, "limits_s": limits, "parts": {},
    }
    t_start = time.perf_counter()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels

    def run_part(key: str, fn, *fn_args) -> None:
        t0 = time.perf_counter()
        entry = {"status": "ok", "result": {}}  # the part fills result as it goes: a cut keeps what it has
        print(f"part {key} (limit {limits[key]} s)", flush=True)
        try:
            with time_limit(limits[key]):
                fn(entry["result"], *fn_args)
        except PartTimeout as e:
            entry.update(status="timeout", error=str(e))
        except Exception as e:  # noqa: BLE001 - a broken part must not cost the others
            entry.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            print(entry["traceback"], file=sys.stderr, flush=True)
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        report["parts"][key] = entry
        report["total_s"] = round(time.perf_counter() - t_start, 1)
        write_json(args.out, report)
        print(f"part {key}: {entry['status']} in {entry['seconds']} s", flush=True)

    if "forward" in parts:
        run_part("forward", part_forward, args, device, peak)
    if "pipeline" in parts or "train" in parts:
        import ray

        t0 = time.perf_counter()
        # --device cpu: a fake GPU, so the plans are the GPU plans (actors/workers hold a GPU).
        ray.init(num_cpus=args.cpus, num_gpus=1 if args.device == "cpu" else None, include_dashboard=False,
                 object_store_memory=(300 if args.quick else 8000) * 2**20, log_to_driver=True,
                 logging_level="WARNING")
        report["ray_init_s"] = round(time.perf_counter() - t0, 1)
        report["ray_resources"] = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    if "pipeline" in parts:
        run_part("pipeline_png512", part_pipeline, args, work, report, "png512")
        run_part("pipeline_originals", part_pipeline, args, work, report, "originals")
    if "train" in parts:
        run_part("train", part_train, args, work, device, peak)
    try:
        print_table(report)
    except Exception:  # noqa: BLE001 - the JSON is written; a table bug must not hide it
        traceback.print_exc()
    print(f"total {report['total_s']} s; wrote {args.out}")
    return 0 if all(p["status"] == "ok" for p in report["parts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
