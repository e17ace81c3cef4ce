"""Robustness across "hospitals": test dice of checkpoints under synthetic acquisition shifts.

    python bench/robustness.py --checkpoint runs/montgomery-cpu/best --checkpoint runs/baseline/best \
        [--data RUN_DIR/split_manifest.csv] [--split test] [--out bench/results/robustness.json]

Each test image is shifted (contrast, gamma, blur, noise, zoom in/out, inversion, 16-bit-like low
dynamic range), then segmented exactly as the product does (preprocess -> forward -> postprocess) and
scored at the ORIGINAL resolution against the equally shifted truth. For every checkpoint it reports dice
with post-processing on (two largest components + hole filling) and off, and with a horizontal-flip
test-time augmentation (probabilities of the image and its mirror averaged). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import cv2
import numpy as np

from raysegment.data.datasets import load_pair, load_split_dataset
from raysegment.data.preprocess import preprocess_image
from raysegment.model.checkpoint import load_model
from raysegment.model.forward import forward_probabilities
from raysegment.postprocess.masks import PostprocessConfig, postprocess
from raysegment.postprocess.metrics import image_metrics


def _zoom(image: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """factor > 1: crop the centre (tighter field of view); < 1: shrink into a black border (wider)."""
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 0, factor)

    def warp(a, interp):
        return cv2.warpAffine(a, matrix, (w, h), flags=interp, borderMode=cv2.BORDER_CONSTANT)

    return warp(image, cv2.INTER_LINEAR), warp(mask.astype(np.uint8), cv2.INTER_NEAREST).astype(bool)


SHIFTS = {
    "none": lambda i, m: (i, m),
    "low contrast": lambda i, m: (0.35 + 0.3 * i, m),
    "gamma 0.5": lambda i, m: (i**0.5, m),
    "gamma 2": lambda i, m: (i**2.0, m),
    "blur": lambda i, m: (cv2.GaussianBlur(i, (0, 0), 3.0), m),
    "noise": lambda i, m: (np.clip(i + np.random.default_rng(0).normal(0, 0.08, i.shape), 0, 1), m),
    "zoom in 1.25": lambda i, m: _zoom(i, m, 1.25),
    "zoom out 0.8": lambda i, m: _zoom(i, m, 0.8),
    "inverted": lambda i, m: (1.0 - i, m),
    "dark 12-bit": lambda i, m: (i * (4095 / 65535), m),
}


def _segment(loaded, image: np.ndarray, clean: bool, tta: bool) -> np.ndarray:
    model_input, geo = preprocess_image(image.astype(np.float32), loaded.spec.preprocess)
    prob = forward_probabilities(loaded.model, model_input[None])[0]
    if tta:
        flipped = forward_probabilities(loaded.model, np.ascontiguousarray(model_input[None, :, ::-1]))[0]
        prob = np.round((prob.astype(np.float32) + flipped[:, ::-1]) / 2).astype(np.uint8)
    config = PostprocessConfig() if clean else PostprocessConfig(keep_largest=0, fill_holes=False)
    return postprocess(prob, geo, loaded.spec.threshold, config).mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True)
    parser.add_argument("--data", default=None,
                        help="dataset or split manifest (default: beside the 1st checkpoint)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default="bench/results/robustness.json")
    args = parser.parse_args()
    data = args.data or os.path.join(os.path.dirname(args.checkpoint[0].rstrip("/")), "split_manifest.csv")
    pairs = load_split_dataset(data).pairs(args.split)
    images = [load_pair(p) for p in pairs]
    variants = [("post-processed", True, False), ("raw mask", False, False), ("post + flip TTA", True, True)]
    results: dict = {"data": data, "split": args.split, "n_images": len(pairs), "checkpoints": {}}
    t0 = time.perf_counter()
    for ckpt in args.checkpoint:
        loaded = load_model(ckpt)
        spec = loaded.spec.preprocess
        label = f"{os.path.basename(os.path.dirname(ckpt.rstrip('/')))} ({spec.normalize})"
        table = {}
        for shift, fn in SHIFTS.items():
            row = {}
            for name, clean, tta in variants:
                dice = [image_metrics(_segment(loaded, *fn(img, mask)[:1], clean, tta), fn(img, mask)[1],
                                      with_hd95=False)["dice"] for img, mask in images]
                row[name] = float(np.mean(dice))
            table[shift] = row
        results["checkpoints"][label] = {"checkpoint": ckpt, "dice": table}
    results["seconds"] = round(time.perf_counter() - t0, 1)

    names = [v[0] for v in variants]
    for label, entry in results["checkpoints"].items():
        print(f"\n{label}: mean test dice over {len(pairs)} images")
        print(f"{'shift':<16}" + "".join(f"{n:>18}" for n in names))
        for shift, row in entry["dice"].items():
            print(f"{shift:<16}" + "".join(f"{row[n]:>18.4f}" for n in names))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.out} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
