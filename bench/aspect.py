"""How non-square films are fed (issue #21): `preprocess.resize` stretch vs letterbox on padded and cropped
copies of square test films (the training films here are square, real films are 4:5 or 5:4, cropped or
padded). Lung dice of each variant, with the checkpoint's own resize mode replaced at inference only.

    python bench/aspect.py --checkpoint runs/loso-montgomery-NAME/best --data ../shared/data/jsrt_512 \\
        [--split all] [--limit 80] [--out bench/results/aspect.json]

Variants of each film (its expert mask transformed alike): as is; padded with black to 4:5 (portrait) and
to 5:4 (landscape); cropped to 4:5 (the sides cut) and to 5:4 (top and bottom cut, 10 % each). Prints mean
lung dice per variant and mode with 95 % bootstrap intervals, and the paired letterbox - stretch
difference; writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from opacity_robustness import lung_dice
from reference import bootstrap_ci


def pad(image: np.ndarray, mask: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Pad with 0 to width / height == ratio (the film centred)."""
    h, w = image.shape
    if ratio < w / h:  # taller: pad top and bottom
        new_h, new_w = round(w / ratio), w
    else:
        new_h, new_w = h, round(h * ratio)
    top, left = (new_h - h) // 2, (new_w - w) // 2
    out_i, out_m = np.zeros((new_h, new_w), image.dtype), np.zeros((new_h, new_w), mask.dtype)
    out_i[top : top + h, left : left + w], out_m[top : top + h, left : left + w] = image, mask
    return out_i, out_m


def crop(image: np.ndarray, mask: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Cut (centred) to width / height == ratio."""
    h, w = image.shape
    if ratio < w / h:  # narrower: cut the sides
        new_w = round(h * ratio)
        x0 = (w - new_w) // 2
        return image[:, x0 : x0 + new_w], mask[:, x0 : x0 + new_w]
    new_h = round(w / ratio)
    y0 = (h - new_h) // 2
    return image[y0 : y0 + new_h], mask[y0 : y0 + new_h]


VARIANTS = {"square (as is)": lambda i, m: (i, m),
            "padded 4:5": lambda i, m: pad(i, m, 4 / 5), "padded 5:4": lambda i, m: pad(i, m, 5 / 4),
            "cropped 4:5": lambda i, m: crop(i, m, 4 / 5), "cropped 5:4": lambda i, m: crop(i, m, 5 / 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="all")
    p.add_argument("--limit", type=int, default=80)
    p.add_argument("--out", default="bench/results/aspect.json")
    args = p.parse_args()

    from raysegment.evaluation.calibrate import load_originals
    from raysegment.evaluation.evaluate import select_pairs
    from raysegment.model.checkpoint import load_model

    loaded = load_model(args.checkpoint)
    pairs, _, _ = select_pairs(args.data, args.split)
    pairs = pairs[: args.limit] if args.limit else pairs
    films = load_originals(pairs)
    res = {"checkpoint": args.checkpoint, "model_id": loaded.model_id, "n": len(films), "variants": {}}
    print(f"{args.checkpoint}: {len(films)} films of {args.data} ({args.split})")
    print(f"{'variant':<18}{'stretch':>26}{'letterbox':>26}{'letterbox - stretch':>30}")
    base = loaded.spec.preprocess
    for name, make in VARIANTS.items():
        images = [make(i, m) for i, m in films]
        dice = {}
        for mode in ("stretch", "letterbox"):
            spec = dataclasses.replace(loaded.spec, preprocess=dataclasses.replace(base, resize=mode))
            dice[mode] = lung_dice(dataclasses.replace(loaded, spec=spec), images)
        diff = dice["letterbox"] - dice["stretch"]
        cis = {k: bootstrap_ci(v) for k, v in dice.items()}
        dlo, dhi = bootstrap_ci(diff)
        res["variants"][name] = {k: {"mean": float(v.mean()), "ci95": cis[k]} for k, v in dice.items()}
        res["variants"][name]["paired"] = {"mean": float(diff.mean()), "ci95": [dlo, dhi]}
        cells = [f"{dice[k].mean():.4f} [{cis[k][0]:.3f}, {cis[k][1]:.3f}]" for k in ("stretch", "letterbox")]
        print(f"{name:<18}{cells[0]:>26}{cells[1]:>26}"
              f"{f'{diff.mean():+.4f} [{dlo:+.4f}, {dhi:+.4f}]':>30}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
