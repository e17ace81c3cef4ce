"""Bytes per results row for the mask: mask_png (PNG bytes) vs mask_rle (COCO compressed RLE string).

    PYTHONPATH=. python bench/mask_bytes.py [--masks DIR] [--scale 1 4]

Takes real lung masks (default: ../shared/data/montgomery_512/masks, 138 masks of 512x512), optionally
upscaled (nearest) to mimic full-resolution films, and writes each column alone to a Parquet file the way
bulk inference does (pyarrow, snappy). Prints the raw and the on-disk bytes per row and writes
bench/results/mask_bytes.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysegment.io.decode import encode_mask_png
from raysegment.io.rle import encode_rle

DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "montgomery_512", "masks")


def parquet_bytes(column: str, values: list) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.parquet")
        pq.write_table(pa.table({column: values}), path, compression="snappy")
        return os.path.getsize(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", default=os.environ.get("RAYSEGMENT_MASKS", DEFAULT))
    parser.add_argument("--scale", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    paths = sorted(glob.glob(os.path.join(args.masks, "*.png")))
    masks = [cv2.imread(p, cv2.IMREAD_GRAYSCALE) > 127 for p in paths]
    if not masks:
        raise SystemExit(f"no masks under {args.masks}")
    rows = []
    for scale in args.scale:
        scaled = [m if scale == 1 else
                  cv2.resize(m.astype(np.uint8), None, fx=scale, fy=scale,
                             interpolation=cv2.INTER_NEAREST) > 0
                  for m in masks]
        png = [encode_mask_png(m) for m in scaled]
        rle = [encode_rle(m) for m in scaled]
        n = len(scaled)
        rows.append({"size": f"{scaled[0].shape[1]}x{scaled[0].shape[0]}", "n": n,
                     "png_raw": sum(map(len, png)) / n, "rle_raw": sum(map(len, rle)) / n,
                     "png_parquet": parquet_bytes("mask_png", png) / n,
                     "rle_parquet": parquet_bytes("mask_rle", rle) / n})
    print(f"{'mask size':>11s} {'n':>4s} {'png B/row':>10s} {'rle B/row':>10s} {'png parquet':>12s} "
          f"{'rle parquet':>12s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['size']:>11s} {r['n']:4d} {r['png_raw']:10.0f} {r['rle_raw']:10.0f} "
              f"{r['png_parquet']:12.0f} {r['rle_parquet']:12.0f} {r['png_parquet'] / r['rle_parquet']:6.1f}")
    out = os.path.join(os.path.dirname(__file__), "results", "mask_bytes.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
