"""`raysegment demo`: the whole product end to end, on a laptop, in a few minutes.

    data (synthetic phantoms, or --data DIR) -> local Ray (or $RAY_ADDRESS) -> 2-worker training on Ray
    Train -> bulk inference over the held-out test split on Ray Data, with ground truth -> pictures

Everything lands under --out (default `demo_out/`):
    data/                      the synthetic X-rays (when no --data)
    runs/<run>/                training run: metrics.csv, training_curves.png, best/, test_metrics.json
    results/                   inference Parquet (raysegment.read_results) + summary.json
    masks/                     predicted masks as PNG, mirroring the input names
    pictures/                  worst cases side by side (input | truth | prediction | overlay),
                               contact_sheet.png (lowest dice and QC-flagged), training_curves.png
    report.html                the run report of the inference results (viz/report.py), one HTML page

`--s3` runs the same flow through a local S3 endpoint (moto on 127.0.0.1, from the dev extra) to show the
object-storage path without a cloud account: data, run storage, checkpoints, results and masks live in
s3://raysegment-demo/; pictures stay local so you can open them.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field

import pandas as pd

from raysegment import logs
from raysegment.cluster.plan import connect
from raysegment.data.synth import write_dataset
from raysegment.infer.config import InferConfig, IOSection, ModelSection
from raysegment.infer.pipeline import run_inference
from raysegment.io import storage
from raysegment.outputs.report import format_summary
from raysegment.train.config import TrainConfig
from raysegment.train.driver import train
from raysegment.viz.report import build_report
from raysegment.viz.show import show

DEMO_BUCKET = "raysegment-demo"


@dataclass
class DemoSettings:
    out: str = "demo_out"
    data: str | None = None  # a labelled dataset; None = synthetic phantoms
    n: int = 120  # synthetic images
    image_size: int = 256  # synthetic image side (px)
    model_size: int = 96  # model input side (px)
    base_channels: int = 8
    depth: int = 3
    epochs: int = 8
    batch_size: int = 4
    lr: float = 3e-3
    num_workers: int = 2
    s3: bool = False
    show_worst: int = 6


@dataclass
class DemoResult:
    run_dir: str
    results: str
    pictures: str
    summary: dict
    test_dice: float | None
    timings: dict[str, float] = field(default_factory=dict)
    report: str | None = None  # report.html


class _Stages:
    """Times named stages and prints one line as each starts."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._name: str | None = None
        self._t0 = 0.0

    def start(self, name: str, what: str) -> None:
        self.stop()
        print(f"== {name}: {what}", flush=True)
        self._name, self._t0 = name, time.perf_counter()

    def stop(self) -> None:
        if self._name:
            self.timings[self._name] = time.perf_counter() - self._t0
            self._name = None


def _start_local_s3(out: str) -> tuple[object, str]:
    """A moto S3 endpoint on 127.0.0.1 with a demo bucket; env set so the driver AND Ray workers use it."""
    import boto3

    from raysegment.io.local_s3 import start_moto

    os.makedirs(out, exist_ok=True)
    server = start_moto(os.path.join(os.path.abspath(out), "moto.log"))
    # Dummy credentials for the local endpoint only (moto accepts any); set before Ray starts so that its
    # workers inherit the same environment.
    os.environ.update({"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo-secret",
                       "AWS_ENDPOINT_URL_S3": server.url, "AWS_REGION": "us-east-1"})
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(Bucket=DEMO_BUCKET)
    return server, f"s3://{DEMO_BUCKET}"


def _upload_dataset(local_dir: str, uri: str) -> str:
    storage.upload_dir(local_dir, uri)
    return uri


def _test_manifest(run_dir: str, dest: str) -> int:
    """Write a manifest (image column) of the run's held-out test split; returns its size."""
    manifest = pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(run_dir, "split_manifest.csv"))),
                           dtype=str)
    test = manifest[manifest["split"] == "test"]
    storage.write_text(dest, test[["image"]].to_csv(index=False))
    return len(test)


def run_demo(s: DemoSettings) -> DemoResult:
    """Run the demo; returns where everything is and the headline numbers."""
    stages = _Stages()
    out = os.path.abspath(s.out)
    os.makedirs(out, exist_ok=True)
    logs.set_destination(out)
    server = None
    try:
        root = out
        if s.s3:
            stages.start("s3", "local S3 endpoint (moto on 127.0.0.1)")
            server, root = _start_local_s3(out)
            print(f"endpoint {server.url}, bucket {root}", flush=True)

        if s.data:
            stages.start("data", f"labelled X-rays from {s.data}")
            data = s.data
        else:
            stages.start("data", f"{s.n} synthetic chest X-rays, {s.image_size}x{s.image_size}")
            data = os.path.join(out, "data")
            write_dataset(data, n=s.n, size=s.image_size, seed=0, layout="generic")
        if s.s3:
            data = _upload_dataset(data, storage.join(root, "data"))
        print(f"data: {data}", flush=True)

        stages.start("ray", "connect to $RAY_ADDRESS or start a local Ray")
        connect()

        stages.start("train", f"{s.num_workers} Ray Train workers, {s.epochs} epochs, UNet base "
                              f"{s.base_channels} depth {s.depth} at {s.model_size}px")
        config = TrainConfig().replace({
            "data.path": data, "model.base_channels": s.base_channels, "model.depth": s.depth,
            "preprocess.size": s.model_size, "optim.epochs": s.epochs, "optim.batch_size": s.batch_size,
            "optim.lr": s.lr, "optim.loss": "bce_dice", "scaling.num_workers": s.num_workers,
            "run.storage_path": storage.join(root, "runs"), "run.name": time.strftime("demo-%Y%m%d-%H%M%S"),
        })
        trained = train(config)

        stages.start("infer", "bulk inference over the held-out test split, with ground truth")
        manifest = storage.join(root, "heldout.csv")
        held_out = _test_manifest(trained.run_dir, manifest)
        results = storage.join(root, "results")
        summary = run_inference(InferConfig(
            IOSection(input=manifest, output=results, masks_out=storage.join(root, "masks"),
                      ground_truth=data, resume=False),
            ModelSection(checkpoint=trained.best_dir)))

        stages.start("pictures", "worst cases, QC-flagged contact sheet, training curves")
        pictures = os.path.join(out, "pictures")
        shown = show(results, pictures, worst=s.show_worst, ground_truth=data)
        curves = os.path.join(pictures, "training_curves.png")
        storage.write_bytes(curves, storage.read_bytes(storage.join(trained.run_dir, "training_curves.png")))

        stages.start("report", "the run report: one HTML page (run, review queue, errors, distributions)")
        report = build_report(results, os.path.join(out, "report.html")).path  # local, also with --s3
        stages.stop()
    finally:
        if server is not None:
            print("(stopping the local S3 endpoint: the s3:// outputs above lived there)", flush=True)
            server.stop()

    metrics = summary.get("metrics") or {}
    test_dice = (metrics.get("dice") or {}).get("mean")
    _print_report(s, trained, summary, held_out, results, shown, curves, stages.timings, report)
    return DemoResult(trained.run_dir, results, pictures, summary, test_dice, stages.timings, report)


def _print_report(s, trained, summary, held_out, results, shown, curves, timings, report) -> None:
    """The demo's last lines: what was trained, the ONE test score (inference on the held-out split, masks
    post-processed at the original resolution, as `raysegment evaluate` scores them), where things are."""
    print("\n== raysegment demo: summary")
    last = trained.history[-1] if trained.history else {}
    print(f"training: {len(trained.history)} epochs, best epoch {trained.best_epoch}, "
          f"final val dice {float(last.get('val_dice', float('nan'))):.4f}")
    print(f"test: inference on the {held_out} held-out X-rays (never seen in training):")
    print(format_summary(summary, micro=False))
    print("outputs:")
    print(f"  run dir          {trained.run_dir}  (best/ = the checkpoint)")
    print(f"  results Parquet  {results}   (raysegment.read_results)")
    print(f"  pictures         {os.path.dirname(curves)}  ({len(shown.pictures)} side-by-side"
          + (", contact_sheet.png" if shown.contact_sheet else "") + ", training_curves.png)")
    print(f"  report           {report}  (open it in a browser)")
    print("stage times: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
          + f"; total {sum(timings.values()):.1f}s")
