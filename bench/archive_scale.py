"""Driver memory and speed of `raysegment infer` from 10^3 to 10^5 inputs, and a 10^7-row --dry-run.

    python bench/archive_scale.py [--sizes 1000 10000 100000] [--manifest-rows 10000000] [--work DIR]

Synthetic archives of N inputs are hard links to a few small PNGs (64x64 phantoms), 1000 per folder; the
model is a tiny untrained UNet (speed does not depend on the weights). Each size runs as its own
`raysegment infer` process on a local Ray; measured from outside:
  driver peak RSS   VmHWM of the driver process (Ray's own processes are separate and not counted),
  first row         seconds from the process start to the first Parquet file of results,
  images/s          from the run's summary (the Ray Data part of the run).
Then a Parquet manifest of --manifest-rows rows (the largest archive's files first, then names that do not
exist) is planned with --dry-run against the output that already holds the largest archive's rows:
listing + resume + plan, no model run. Prints a table and writes JSON
(default bench/results/archive_scale.json).
Targets: RSS at 10^5 within 1.15x of 10^3; the 10^7 dry run under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time


def make_archive(root: str, n: int, sources: list[str]) -> str:
    """N hard links to `sources` under root/archive_N/dNNN/ (reused when complete)."""
    folder = os.path.join(root, f"archive_{n}")
    stamp = os.path.join(folder, ".complete")
    if os.path.exists(stamp):
        return folder
    for i in range(n):
        sub = os.path.join(folder, f"d{i // 1000:04d}")
        if i % 1000 == 0:
            os.makedirs(sub, exist_ok=True)
        dest = os.path.join(sub, f"img{i:08d}.png")
        if not os.path.exists(dest):
            os.link(sources[i % len(sources)], dest)
    with open(stamp, "w"):
        pass
    return folder


def make_manifest(path: str, archive: str, rows: int) -> str:
    """A Parquet manifest: every file of `archive`, then made-up names up to `rows` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if os.path.exists(path):
        return path
    real = sorted(os.path.join(d, f) for d, _, files in os.walk(archive) for f in files if f.endswith(".png"))
    with pq.ParquetWriter(path + ".tmp", pa.schema([("image_uri", pa.string())])) as writer:
        writer.write_table(pa.table({"image_uri": real}))
        start, step = len(real), 1_000_000
        while start < rows:
            stop = min(rows, start + step)
            writer.write_table(pa.table({"image_uri": [f"{archive}/missing/d{i // 1000:05d}/img{i:09d}.png"
                                                       for i in range(start, stop)]}))
            start = stop
    os.replace(path + ".tmp", path)
    return path


def run_driver(args: list[str], output: str | None, env: dict) -> dict:
    """Run `raysegment ...` as its own process; peak RSS (VmHWM, polled), first-row time, exit code."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "raysegment", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak, first_row, lines = [0], [None], []

    def poll() -> None:
        runs = os.path.join(output, "runs") if output else None
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]) * 1024)
            except OSError:
                pass
            if runs and first_row[0] is None and os.path.isdir(runs):
                for d in os.listdir(runs):
                    if any(n.endswith(".parquet") for n in os.listdir(os.path.join(runs, d))):
                        first_row[0] = time.monotonic() - t0
            time.sleep(0.1)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        print("   |", line.rstrip("\n"), flush=True)
    rc = proc.wait()
    watcher.join()
    return {"rc": rc, "peak_rss_mb": round(peak[0] / 2**20, 1),
            "first_row_s": first_row[0] and round(first_row[0], 2),
            "command_s": round(time.monotonic() - t0, 2), "tail": lines[-8:]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    p.add_argument("--manifest-rows", type=int, default=10_000_000, help="0: skip the dry run")
    p.add_argument("--work", default="/tmp/archive_scale")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "archive_scale.json"))
    args = p.parse_args(argv)

    import torch

    from raysegment.data.preprocess import PreprocessConfig
    from raysegment.data.synth import write_dataset
    from raysegment.model.checkpoint import ModelSpec, save_checkpoint
    from raysegment.model.unet import UNet, UNetConfig

    os.makedirs(args.work, exist_ok=True)
    src = os.path.join(args.work, "src")
    if not os.path.isdir(os.path.join(src, "cxr")):
        write_dataset(src, n=8, size=64, seed=9, layout="generic")
    sources = sorted(os.path.join(src, "cxr", f) for f in os.listdir(os.path.join(src, "cxr")))
    ckpt = os.path.join(args.work, "ckpt")
    if not os.path.isdir(ckpt):
        torch.manual_seed(0)
        spec = ModelSpec(UNetConfig(base_channels=4, depth=2), PreprocessConfig(size=32))
        save_checkpoint(ckpt, UNet.from_config(spec.model), spec)
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)

    rows = []

    def save() -> None:  # after every case: a long run cut short still leaves its figures
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"machine": platform.platform(), "cpus": os.cpu_count(), "rows": rows}, f, indent=2)

    for n in args.sizes:
        archive = make_archive(args.work, n, sources)
        output = os.path.join(args.work, f"out_{n}")
        subprocess.run(["rm", "-rf", output], check=True)
        print(f"== {n} inputs", flush=True)
        r = run_driver(["infer", "--input", archive, "--checkpoint", ckpt, "--output", output, "--no-wait"],
                       output, env)
        summary = {}
        if r["rc"] == 0:
            with open(os.path.join(output, "summary.json")) as f:
                summary = json.load(f)
        rows.append({"case": f"infer {n}", "inputs": n, **r, "images_per_s": summary.get("images_per_s"),
                     "ok": summary.get("ok"), "missing": summary.get("missing")})
        save()
    if args.manifest_rows:
        largest = max(args.sizes)
        manifest = make_manifest(os.path.join(args.work, f"manifest_{args.manifest_rows}.parquet"),
                                 os.path.join(args.work, f"archive_{largest}"), args.manifest_rows)
        print(f"== dry run, {args.manifest_rows} manifest rows against {largest} done", flush=True)
        r = run_driver(["infer", "--input", manifest, "--checkpoint", ckpt, "--output",
                        os.path.join(args.work, f"out_{largest}"), "--dry-run", "--no-wait"], None, env)
        rows.append({"case": f"dry-run {args.manifest_rows}", "inputs": args.manifest_rows, **r})

    base = rows[0]["peak_rss_mb"]
    print(f"\n{'case':<20} {'rc':>3} {'peak RSS MB':>12} {'x first':>8} {'first row s':>12} {'images/s':>9} "
          f"{'total s':>8}")
    for r in rows:
        r["rss_vs_first"] = round(r["peak_rss_mb"] / base, 3) if base else None
        print(f"{r['case']:<20} {r['rc']:>3} {r['peak_rss_mb']:>12.1f} {r['rss_vs_first'] or 0:>8.3f} "
              f"{r.get('first_row_s') or 0:>12.2f} {r.get('images_per_s') or 0:>9.1f} {r['command_s']:>8.1f}")
    save()
    print(f"-> {args.out}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
