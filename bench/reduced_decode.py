"""Would libjpeg's reduced-size decode (cv2.IMREAD_REDUCED_GRAYSCALE_2/4/8) be exact enough for our masks?

    python bench/reduced_decode.py --checkpoint RUN/best --data ../shared/data/montgomery_512 [--n 40]

When the model input (128-512 px) is far smaller than a JPEG original (~3000 px), libjpeg can decode at
1/2, 1/4 or 1/8 size by scaling its DCT, skipping most of the inverse-transform work. The pipeline would
then resize that smaller image to the model size. This bench measures, per reduction factor k, on
realistic originals, against today's full decode:
  - CPU ms per image of decode + preprocess (one thread, as a pipeline stage task),
  - the model input difference (mean and max |uint8 difference|),
  - the final masks at the original resolution: dice(full-decode mask, reduced-decode mask), and each
    one's dice against the expert mask (does quality move?).
Originals: each expert-labelled 512 px X-ray upscaled to 3000x2500 (bicubic) with film-grain noise (so
there is high-frequency content for the DCT scaling to drop), JPEG quality 92. Prints a table and writes
JSON (default bench/results/reduced_decode.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import cv2
import numpy as np

from raysegment.data.datasets import discover, load_mask
from raysegment.data.preprocess import geometry, preprocess_image
from raysegment.io import storage
from raysegment.io.decode import decode_image
from raysegment.model.checkpoint import load_model
from raysegment.model.forward import forward_probabilities
from raysegment.postprocess.masks import PostprocessConfig, postprocess
from raysegment.postprocess.metrics import image_metrics

REDUCED = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
           8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def make_original(image512: np.ndarray, height: int, width: int, seed: int) -> bytes:
    big = cv2.resize(image512.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    big += np.random.default_rng(seed).normal(0, 4.0, big.shape).astype(np.float32)  # film grain
    ok, data = cv2.imencode(".jpg", np.clip(big, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return data.tobytes()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(image_metrics(a, b)["dice"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="labelled data set (any layout datasets.discover reads)")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--width", type=int, default=2500)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "reduced_decode.json"))
    args = p.parse_args(argv)
    cv2.setNumThreads(1)

    loaded = load_model(args.checkpoint)
    spec = loaded.spec
    pairs = discover(args.data).pairs[: args.n]
    variants = {"full": None, **{f"reduced_{k}": k for k in REDUCED
                                 if min(args.height, args.width) // k >= spec.preprocess.size}}
    rows = {v: [] for v in variants}
    for i, pair in enumerate(pairs):
        small = decode_image(storage.read_bytes(pair.image_uri)).image
        data = make_original(np.round(small * 255), args.height, args.width, i)
        truth = cv2.resize(load_mask(pair.mask_uris, small.shape, pair.image_uri).astype(np.uint8),
                           (args.width, args.height), interpolation=cv2.INTER_NEAREST).astype(bool)
        geo = geometry(args.height, args.width, spec.preprocess)  # the original's, as the pipeline stores
        results = {}
        for name, k in variants.items():
            t0 = time.process_time()
            if k is None:
                model_input, _ = preprocess_image(decode_image(data).image, spec.preprocess)
            else:
                reduced = cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED[k])
                model_input, _ = preprocess_image(np.divide(reduced, np.float32(255), dtype=np.float32),
                                                  spec.preprocess)
            ms = (time.process_time() - t0) * 1000
            prob = forward_probabilities(loaded.model, model_input[None])[0]
            mask = postprocess(prob, geo, spec.threshold, PostprocessConfig()).mask
            results[name] = (model_input, mask)
            rows[name].append({"ms": ms, "dice_truth": dice(mask, truth)})
        full_input, full_mask = results["full"]
        for name in variants:
            model_input, mask = results[name]
            d = np.abs(model_input.astype(int) - full_input.astype(int))
            rows[name][-1].update(input_mean_abs=float(d.mean()), input_max_abs=int(d.max()),
                                  dice_vs_full=dice(mask, full_mask))

    summary = {}
    print(f"{len(pairs)} originals {args.height}x{args.width} JPEG q92 -> model {spec.preprocess.size} px "
          f"({args.checkpoint})")
    print(f"{'variant':11s} {'ms/img':>7s} {'speed-up':>8s} {'input |d| mean':>14s} {'max':>4s} "
          f"{'dice vs full: mean':>18s} {'min':>6s} {'dice vs truth':>13s}")
    full_ms = statistics.median(r["ms"] for r in rows["full"])
    for name, rs in rows.items():
        s = {"ms_median": statistics.median(r["ms"] for r in rs),
             "input_mean_abs": statistics.mean(r["input_mean_abs"] for r in rs),
             "input_max_abs": max(r["input_max_abs"] for r in rs),
             "dice_vs_full_mean": statistics.mean(r["dice_vs_full"] for r in rs),
             "dice_vs_full_min": min(r["dice_vs_full"] for r in rs),
             "dice_truth_mean": statistics.mean(r["dice_truth"] for r in rs)}
        s["speedup"] = full_ms / s["ms_median"]
        summary[name] = s
        print(f"{name:11s} {s['ms_median']:7.1f} {s['speedup']:7.2f}x {s['input_mean_abs']:14.3f} "
              f"{s['input_max_abs']:4d} {s['dice_vs_full_mean']:18.5f} {s['dice_vs_full_min']:6.4f} "
              f"{s['dice_truth_mean']:13.4f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"n": len(pairs), "original": [args.height, args.width], "checkpoint": args.checkpoint,
                   "model_size": spec.preprocess.size, "variants": summary, "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
