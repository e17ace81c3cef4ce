"""Robustness to disease-like opacities (issue #21): lung dice of films clean vs the same films with a
synthetic opacity over at least 30 % of one lung, painted by the EVALUATION generator
(raysegment/evaluation/opacities.py, never the training augmentation's), with the lung label kept.

    python bench/opacity_robustness.py --checkpoint runs/loso-montgomery-256-eq/best \\
        --data ../shared/data/jsrt_512 --split all [--limit 80] [--out bench/results/opacity_X.json]

Each film is predicted and scored as infer does (data/model_input.to_model_input, model/forward, then
postprocess/scoring.score with the expert lung mask in memory). Prints clean mean, opacified mean, the
paired difference with its 95 % bootstrap interval, and the opacity cover; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import bootstrap_ci


def lung_dice(loaded, images: list[tuple[np.ndarray, np.ndarray]], batch: int = 16) -> np.ndarray:
    from raysegment.data.model_input import to_model_input
    from raysegment.model.forward import forward_probabilities
    from raysegment.postprocess.masks import PostprocessConfig
    from raysegment.postprocess.scoring import score

    out = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        prepared = [to_model_input(img, loaded.spec.preprocess) for img, _ in chunk]
        probs = forward_probabilities(loaded.model, np.stack([p[0] for p in prepared]))
        for (_, truth), (_, geo), prob in zip(chunk, prepared, probs, strict=True):
            scored = score(prob, geo, loaded.spec.threshold, PostprocessConfig(), truth=truth,
                           with_hd95=False)
            out.append(scored.metrics["dice"])
    return np.array(out, dtype=np.float64)


def robustness(checkpoint: str, data: str, split: str = "all", limit: int = 0,
               min_cover: float = 0.3) -> dict:
    """Clean vs opacified lung dice of `split` of `data` (the first `limit` films by id; 0: all)."""
    from raysegment.evaluation.calibrate import load_originals
    from raysegment.evaluation.evaluate import select_pairs
    from raysegment.evaluation.opacities import opacify
    from raysegment.model.checkpoint import load_model

    loaded = load_model(checkpoint)
    pairs, _, _ = select_pairs(data, split)
    pairs = pairs[:limit] if limit else pairs
    clean = load_originals(pairs)
    sick, covers = [], []
    for k, (image, lungs) in enumerate(clean):
        painted, cover = opacify(image, lungs, seed=k, min_cover=min_cover)
        sick.append((painted, lungs))
        covers.append(cover)
    d_clean, d_sick = lung_dice(loaded, clean), lung_dice(loaded, sick)
    diff = d_sick - d_clean
    lo, hi = bootstrap_ci(diff)
    return {"checkpoint": checkpoint, "model_id": loaded.model_id, "data": data, "split": split,
            "n": len(pairs), "clean": float(d_clean.mean()), "opacified": float(d_sick.mean()),
            "paired_diff": float(diff.mean()), "ci95": [lo, hi], "cover_median": float(np.median(covers)),
            "cover_min": float(np.min(covers)),
            "per_image": {p.image_id: [float(a), float(b)]
                          for p, a, b in zip(pairs, d_clean, d_sick, strict=True)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="all")
    p.add_argument("--limit", type=int, default=0, help="the first N films by id (0: all)")
    p.add_argument("--min-cover", type=float, default=0.3)
    p.add_argument("--out")
    args = p.parse_args()
    res = robustness(args.checkpoint, args.data, args.split, args.limit, args.min_cover)
    print(f"{args.checkpoint}: {res['n']} films of {args.data} ({args.split}), opacity cover median "
          f"{res['cover_median']:.2f} (min {res['cover_min']:.2f})")
    lo, hi = res["ci95"]
    print(f"  lung dice clean {res['clean']:.4f}  opacified {res['opacified']:.4f}  "
          f"paired {res['paired_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
