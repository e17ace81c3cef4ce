"""Bulk inference from S3 under request latency: images/s at 0 ms and at 40 ms per request, in one run.

    python bench/s3_latency.py [--n 600] [--size 128] [--delay-ms 40]

N small synthetic PNGs go into a moto bucket (moto_server on 127.0.0.1); raysegment/testing's FaultyProxy
sits in front of it and holds every request `--delay-ms` (a first-byte latency like AWS S3's) in the second
pass. Each pass runs raysegment.infer.pipeline.run_inference over the same bucket into a fresh output with
a tiny untrained model (speed does not depend on the weights), on one local Ray started once. Also counts
the requests per image that reached the proxy (GET only: no HEAD per object). Prints a table and writes JSON
(default bench/results/s3_latency.json). Target: images/s at 40 ms >= 0.8x images/s at 0 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch

from raysegment.data.preprocess import PreprocessConfig
from raysegment.io import storage
from raysegment.model.checkpoint import ModelSpec, save_checkpoint
from raysegment.model.unet import UNet, UNetConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--delay-ms", type=float, default=40.0)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "s3_latency.json"))
    args = p.parse_args(argv)

    from raysegment.cluster.plan import connect
    from raysegment.data.synth import write_dataset
    from raysegment.infer.config import InferConfig, IOSection, ModelSection
    from raysegment.infer.pipeline import run_inference
    from raysegment.io.local_s3 import start_moto
    from raysegment.testing.faulty_proxy import FaultyProxy

    work = tempfile.mkdtemp(prefix="s3lat-")
    server = start_moto(os.path.join(work, "moto.log"))
    os.environ.update(AWS_ACCESS_KEY_ID="AKIABENCHBENCHBENCH0", AWS_SECRET_ACCESS_KEY="bench-secret-not-real",
                      AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")
        client.create_bucket(Bucket="latency-bench")
        write_dataset(os.path.join(work, "data"), n=args.n, size=args.size, seed=3, layout="generic")
        cxr = os.path.join(work, "data", "cxr")
        for name in sorted(os.listdir(cxr)):
            client.upload_file(os.path.join(cxr, name), "latency-bench", f"cxr/{name}")
        torch.manual_seed(0)
        spec = ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=64))
        ckpt = os.path.join(work, "ckpt")
        save_checkpoint(ckpt, UNet.from_config(spec.model), spec)

        connect(num_cpus=args.num_cpus)  # one local Ray for both passes (workers inherit the AWS_* above)
        rows = []
        with FaultyProxy("127.0.0.1", server.port) as proxy:
            options = storage.S3Options(endpoint_url=proxy.url)
            for delay in (0.0, args.delay_ms):
                proxy.delay_ms = delay
                seen = len(proxy.heads)
                t0 = time.perf_counter()
                summary = run_inference(InferConfig(
                    IOSection(input="s3://latency-bench/cxr", output=os.path.join(work, f"out_{int(delay)}")),
                    ModelSection(checkpoint=ckpt), s3=options))
                heads = [h.split(b" ", 1)[0].decode() for h in proxy.heads[seen:]]
                rows.append({"delay_ms": delay, "images": summary["ok"], "errors": summary["errors"],
                             "images_per_s": summary["images_per_s"], "wall_s": summary["wall_s"],
                             "command_s": round(time.perf_counter() - t0, 3),
                             "gets": heads.count("GET"), "heads": heads.count("HEAD"),
                             "requests": len(heads)})
    finally:
        server.stop()
    base = rows[0]["images_per_s"] or float("nan")
    print(f"{'delay':>7} {'images':>7} {'images/s':>9} {'ratio':>6} {'GET':>6} {'HEAD':>5} {'req/img':>8}")
    for r in rows:
        r["ratio"] = round((r["images_per_s"] or 0) / base, 3)
        print(f"{r['delay_ms']:>5.0f}ms {r['images']:>7} {r['images_per_s']:>9.1f} {r['ratio']:>6.2f} "
              f"{r['gets']:>6} {r['heads']:>5} {r['requests'] / max(1, r['images']):>8.2f}")
    report = {"n": args.n, "size": args.size, "num_cpus": args.num_cpus, "machine": platform.platform(),
              "cpus": os.cpu_count(), "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
